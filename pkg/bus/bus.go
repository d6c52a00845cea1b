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
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// Config is the NATS connection and stream configuration shared by all services.
type Config struct {
	URL       string
	CredsFile string
	// NKeyFile is the seed of this service's identity in deploy/nats
	// (scripts/nats-creds.sh writes one per identity).
	NKeyFile string
	// InboxPrefix starts every reply subject. deploy/nats lets each
	// identity subscribe only to its own prefix, so that no service reads
	// the replies (pulled messages, KV values) meant for another.
	InboxPrefix string
	TLS         TLSConfig
	Streams     StreamsConfig
}

// TLSConfig is the optional TLS of the NATS connection (deploy/nats/README.md).
type TLSConfig struct {
	CAFile, CertFile, KeyFile string
}

// RegisterFlags registers the NATS flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.URL, "nats-url", nats.DefaultURL, "NATS server URL(s), comma-separated")
	fs.StringVar(&c.CredsFile, "nats-creds", "", "NATS credentials file (JWT + nkey), when the server requires one")
	fs.StringVar(&c.NKeyFile, "nats-nkey-file", "", "NATS nkey seed file of this service's identity (deploy/nats), when the server requires one")
	fs.StringVar(&c.InboxPrefix, "nats-inbox-prefix", strings.TrimSuffix(nats.InboxPrefix, "."), "prefix of reply subjects; deploy/nats permits each identity only its own (_INBOX_<identity>)")
	fs.StringVar(&c.TLS.CAFile, "nats-tls-ca", "", "CA certificate file that signed the NATS server's certificate (turns TLS on)")
	fs.StringVar(&c.TLS.CertFile, "nats-tls-cert", "", "client certificate file, when the NATS server verifies clients")
	fs.StringVar(&c.TLS.KeyFile, "nats-tls-key", "", "client certificate's key file")
	c.Streams.RegisterFlags(fs)
}

// Validate checks c.
func (c *Config) Validate() error {
	if c.URL == "" {
		return errors.New("nats-url is required")
	}
	if c.CredsFile != "" && c.NKeyFile != "" {
		return errors.New("nats-creds and nats-nkey-file are exclusive: give one identity")
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		return errors.New("nats-tls-cert and nats-tls-key go together")
	}
	if c.InboxPrefix == "" || strings.ContainsAny(c.InboxPrefix, ".*> \t") {
		return fmt.Errorf("nats-inbox-prefix %q must be one subject token", c.InboxPrefix)
	}
	return c.Streams.Validate()
}

// Connect connects to NATS. It returns at once even when the server is not up
// yet: the connection keeps retrying, and reconnects for ever after a loss,
// buffering publishes meanwhile (nats.go's reconnect buffer). Connection state
// changes are logged.
func Connect(cfg Config, name string, log *slog.Logger) (*nats.Conn, error) {
	unreachable := &connFailures{url: RedactURLs(cfg.URL), log: log, every: time.Minute}
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
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			unreachable.report(err)
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
	auth, err := cfg.authOptions()
	if err != nil {
		return nil, err
	}
	opts = append(opts, auth...)
	nc, err := nats.Connect(cfg.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connecting to NATS at %s: %w", RedactURLs(cfg.URL), err)
	}
	return nc, nil
}

// connFailures logs why NATS cannot be reached, naming the URL and the cause
// ("NATS at nats://nats:4222: connect: connection refused"), once per cause
// and then at most every interval: the client retries every half second.
type connFailures struct {
	url   string
	log   *slog.Logger
	every time.Duration

	mu   sync.Mutex
	last string
	at   time.Time
}

func (f *connFailures) report(err error) {
	if errors.Is(err, nats.ErrNoServers) {
		return // says nothing; the next attempt reports its own cause
	}
	msg := ConnError(f.url, err).Error()
	f.mu.Lock()
	now := time.Now()
	if msg == f.last && now.Sub(f.at) < f.every {
		f.mu.Unlock()
		return
	}
	f.last, f.at = msg, now
	f.mu.Unlock()
	f.log.Warn("NATS unreachable, retrying", "err", msg)
}

// ConnError names the NATS URL and the cause of a failed connection: the
// innermost network error ("connect: connection refused", "lookup nats: no
// such host") rather than the dial's whole chain.
func ConnError(url string, err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		err = op.Err
	}
	return fmt.Errorf("NATS at %s: %w", url, err)
}

// RedactURLs is a comma-separated list of NATS URLs with any password
// replaced, fit for logs.
func RedactURLs(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if u, err := url.Parse(p); err == nil && u.User != nil {
			if _, has := u.User.Password(); has {
				p = u.Redacted()
			} else {
				u.User = url.User("xxxxx")
				p = u.String()
			}
		}
		parts[i] = p
	}
	return strings.Join(parts, ",")
}

// authOptions are the identity, inbox and TLS options of cfg.
func (cfg Config) authOptions() ([]nats.Option, error) {
	var opts []nats.Option
	if cfg.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	}
	if cfg.NKeyFile != "" {
		o, err := nats.NkeyOptionFromSeed(cfg.NKeyFile)
		if err != nil {
			return nil, fmt.Errorf("reading NATS nkey seed %s: %w", cfg.NKeyFile, err)
		}
		opts = append(opts, o)
	}
	if cfg.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(cfg.InboxPrefix))
	}
	if cfg.TLS.CAFile != "" {
		opts = append(opts, nats.RootCAs(cfg.TLS.CAFile))
	}
	if cfg.TLS.CertFile != "" {
		opts = append(opts, nats.ClientCert(cfg.TLS.CertFile, cfg.TLS.KeyFile))
	}
	return opts, nil
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
