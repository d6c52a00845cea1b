// Package bus is how whalewatch services use NATS JetStream: connecting (and
// reconnecting for ever), declaring the streams of the wire contract,
// publishing events exactly once within JetStream's duplicate window, and
// consuming them with the ack discipline every consumer shares:
//
//   - a message is acked only after the handler says its effect happened;
//   - a transient failure is nak'ed with a growing delay and retried;
//   - a message that can never succeed (undecodable, or a handler's Permanent
//     error, or past MaxDeliver) is copied to the dead-letter subject
//     whalewatch.deadletter.<consumer> with the reason, counted, and terminated,
//     so one bad message never blocks the others.
package bus

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
)

// Config is the NATS connection and stream configuration shared by all services.
type Config struct {
	URL       string
	CredsFile string
	Streams   StreamsConfig
}

// RegisterFlags registers the NATS flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.URL, "nats-url", nats.DefaultURL, "NATS server URL(s), comma-separated")
	fs.StringVar(&c.CredsFile, "nats-creds", "", "NATS credentials file (JWT + nkey), when the server requires one")
	c.Streams.RegisterFlags(fs)
}

// Validate checks c.
func (c *Config) Validate() error {
	if c.URL == "" {
		return errors.New("nats-url is required")
	}
	return c.Streams.Validate()
}

// Connect connects to NATS. It returns at once even when the server is not up
// yet: the connection keeps retrying, and reconnects for ever after a loss,
// buffering publishes meanwhile (nats.go's reconnect buffer). Connection state
// changes are logged.
func Connect(cfg Config, name string, log *slog.Logger) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("NATS disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("NATS reconnected", "url", nc.ConnectedUrlRedacted())
		}),
		nats.ConnectHandler(func(nc *nats.Conn) {
			log.Info("NATS connected", "url", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			log.Warn("NATS async error", "subject", subj, "err", err)
		}),
	}
	if cfg.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	}
	nc, err := nats.Connect(cfg.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connecting to NATS at %s: %w", cfg.URL, err)
	}
	return nc, nil
}

// Ready is a readiness check: the connection is up.
func Ready(nc *nats.Conn) func(context.Context) error {
	return func(context.Context) error {
		if s := nc.Status(); s != nats.CONNECTED {
			return fmt.Errorf("NATS %s", s)
		}
		return nil
	}
}
