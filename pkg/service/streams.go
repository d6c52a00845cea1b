package service

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/admin"
	"github.com/whalewatch/whalewatch/pkg/bus"
)

// StreamsConfig is the configuration of the `streams` command: the NATS
// connection and stream flags every service has, and how long to wait.
type StreamsConfig struct {
	Log     admin.LogConfig
	NATS    bus.Config
	Timeout time.Duration
}

// RegisterFlags registers the command's flags on fs.
func (c *StreamsConfig) RegisterFlags(fs *flag.FlagSet) {
	c.Log.RegisterFlags(fs)
	c.NATS.RegisterFlags(fs)
	fs.DurationVar(&c.Timeout, "streams-timeout", 5*time.Minute, "how long streams may wait for NATS to come up and answer")
}

// Validate checks c.
func (c *StreamsConfig) Validate() error {
	var errs []error
	if c.Timeout <= 0 {
		errs = append(errs, errors.New("streams-timeout must be positive"))
	}
	return errors.Join(append(errs, c.Log.Validate(), c.NATS.Validate())...)
}

// StreamsCommand is `<binary> streams`: create the streams, or update them to
// the stream flags, then exit. In production it runs once per `up` as the
// setup identity (deploy/nats), the only one allowed to create and update
// streams; the services' identities may only read them.
func StreamsCommand(binary string) Command {
	var cfg StreamsConfig
	return Sub("streams", "create the NATS streams, or update them to the stream flags, then exit (the setup identity's job)",
		&cfg, &cfg.Log, func(ctx context.Context, log *slog.Logger, _ *prometheus.Registry) error {
			return EnsureStreams(ctx, binary, cfg, log)
		})
}

// EnsureStreams connects as cfg says and makes the streams match its flags,
// retrying until NATS answers or cfg.Timeout passes.
func EnsureStreams(ctx context.Context, binary string, cfg StreamsConfig, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	nc, err := bus.Connect(cfg.NATS, "whalewatch-"+binary+"-streams", log)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	streams := cfg.NATS.Streams
	streams.Log = log
	last := errors.New("no answer")
	if err := bus.EnsureStreamsRetry(ctx, js, streams, func(err error) {
		last = err
		log.Warn("ensuring streams, will retry", "url", bus.RedactURLs(cfg.NATS.URL), "err", err)
	}); err != nil {
		return fmt.Errorf("streams not ensured within %s: %w", cfg.Timeout, last)
	}
	names := make([]string, 0, 4)
	for _, s := range streams.Specs() {
		names = append(names, s.Name)
	}
	log.Info("streams ensured", "streams", names)
	return nil
}
