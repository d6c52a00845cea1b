package bus

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/whalewatch/whalewatch/pkg/subject"
)

// Stream names. Each stream holds one subject tree of package subject.
const (
	StreamTelemetry  = "WHALEWATCH_TELEMETRY"
	StreamThreats    = "WHALEWATCH_THREATS"
	StreamActions    = "WHALEWATCH_ACTIONS"
	StreamDeadLetter = "WHALEWATCH_DEADLETTER"
)

// Limits are the retention limits of one stream. When a consumer falls behind
// (Elasticsearch down, say) messages older than MaxAge or beyond MaxBytes are
// discarded oldest first: these limits are the bound on how long an outage the
// pipeline survives without loss.
type Limits struct {
	MaxAge   time.Duration
	MaxBytes int64
}

// StreamsConfig configures every stream.
type StreamsConfig struct {
	Telemetry, Threats, Actions, DeadLetter Limits
	Replicas                                int
	Duplicates                              time.Duration
}

// RegisterFlags registers the stream flags on fs.
func (c *StreamsConfig) RegisterFlags(fs *flag.FlagSet) {
	reg := func(l *Limits, name string, age time.Duration, bytes int64) {
		fs.DurationVar(&l.MaxAge, "stream-"+name+"-max-age", age, "retention of the "+name+" stream (0: unlimited)")
		fs.Int64Var(&l.MaxBytes, "stream-"+name+"-max-bytes", bytes, "size limit of the "+name+" stream in bytes (-1: unlimited)")
	}
	reg(&c.Telemetry, "telemetry", 72*time.Hour, 8<<30)
	reg(&c.Threats, "threats", 90*24*time.Hour, 1<<30)
	reg(&c.Actions, "actions", 30*24*time.Hour, 256<<20)
	reg(&c.DeadLetter, "deadletter", 30*24*time.Hour, 1<<30)
	fs.IntVar(&c.Replicas, "stream-replicas", 1, "replicas of each stream (3 on a NATS cluster)")
	fs.DurationVar(&c.Duplicates, "stream-duplicates", 2*time.Minute, "window in which a re-published event id is stored once")
}

// Validate checks c.
func (c *StreamsConfig) Validate() error {
	for name, l := range map[string]Limits{"telemetry": c.Telemetry, "threats": c.Threats, "actions": c.Actions, "deadletter": c.DeadLetter} {
		if l.MaxAge < 0 {
			return fmt.Errorf("stream-%s-max-age must not be negative", name)
		}
		if l.MaxBytes == 0 || l.MaxBytes < -1 {
			return fmt.Errorf("stream-%s-max-bytes must be positive or -1", name)
		}
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		return errors.New("stream-replicas must be between 1 and 5")
	}
	if c.Duplicates <= 0 {
		return errors.New("stream-duplicates must be positive")
	}
	return nil
}

// Specs returns the JetStream configuration of every stream.
func (c *StreamsConfig) Specs() []jetstream.StreamConfig {
	spec := func(name, desc, subj string, l Limits) jetstream.StreamConfig {
		return jetstream.StreamConfig{
			Name:        name,
			Description: desc,
			Subjects:    []string{subj},
			Retention:   jetstream.LimitsPolicy,
			Discard:     jetstream.DiscardOld,
			Storage:     jetstream.FileStorage,
			MaxAge:      l.MaxAge,
			MaxBytes:    l.MaxBytes,
			MaxMsgs:     -1,
			Replicas:    c.Replicas,
			Duplicates:  c.Duplicates,
		}
	}
	return []jetstream.StreamConfig{
		spec(StreamTelemetry, "whalewatch telemetry from collectors", subject.AllTelemetry, c.Telemetry),
		spec(StreamThreats, "whalewatch threats from detectors", subject.AllThreats, c.Threats),
		spec(StreamActions, "whalewatch response requests and results", subject.AllActions, c.Actions),
		spec(StreamDeadLetter, "messages whalewatch consumers gave up on, with the reason", subject.AllDeadLetters, c.DeadLetter),
	}
}

// StreamManager is the part of JetStream EnsureStreams needs.
type StreamManager interface {
	CreateOrUpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error)
}

// EnsureStreams creates or updates every stream so that it matches c. It is
// idempotent: every service calls it at start, in any order.
func EnsureStreams(ctx context.Context, js StreamManager, c StreamsConfig) error {
	for _, spec := range c.Specs() {
		if _, err := js.CreateOrUpdateStream(ctx, spec); err != nil {
			return fmt.Errorf("ensuring stream %s: %w", spec.Name, err)
		}
	}
	return nil
}

// EnsureStreamsRetry calls EnsureStreams until it succeeds or ctx ends, so a
// service may start before NATS does.
func EnsureStreamsRetry(ctx context.Context, js StreamManager, c StreamsConfig, onErr func(error)) error {
	return retry(ctx, func() error { return EnsureStreams(ctx, js, c) }, onErr)
}

// retry calls f until it returns nil or ctx ends, backing off up to 5 s.
func retry(ctx context.Context, f func() error, onErr func(error)) error {
	delay := 100 * time.Millisecond
	for {
		err := f()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if onErr != nil {
			onErr(err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, 5*time.Second)
	}
}
