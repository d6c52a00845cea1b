package bus

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
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

	// Log gets EnsureStreams' warnings (a stream whose settings differ and
	// that this identity may not update); not a flag. Nil: none.
	Log *slog.Logger
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
	CreateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error)
	UpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error)
	Stream(ctx context.Context, name string) (jetstream.Stream, error)
}

// APITimeout bounds one JetStream API request made at start-up (creating or
// updating a stream, consumer or KV bucket) on the first try. On a cluster
// such a request goes through the meta leader, which may be busy with other
// services' requests or not elected yet; its answer may then be lost
// although the request was applied. A request that is not answered in time
// is confirmed by reading the info back, and retried with back-off when not
// applied, each retry waiting twice as long (up to MaxAPITimeout, for a
// cluster that is slow rather than losing answers): nothing waits out a
// long timeout behind a busy meta leader.
const (
	APITimeout    = time.Second
	MaxAPITimeout = 10 * time.Second
)

// SetupCommand is what creates and updates the streams and KV buckets where
// the services' NATS identities may only read them (deploy/nats/README.md,
// "Who creates streams"); errors and warnings name it.
const SetupCommand = "the setup job with the setup identity (deploy/nats/README.md, \"Who creates streams\")"

// EnsureStreams makes every stream match c: it reads each stream first and
// creates it when missing or updates it when its settings differ. It is
// idempotent: every service calls it at start, in any order, and the streams
// are ensured at once rather than one after another. Each request may take
// MaxAPITimeout (EnsureStreamsRetry starts shorter).
//
// Where the identity may only read streams (production: the setup job owns
// them), a stream that exists with other settings is used as it is, with a
// warning on c.Log naming what differs; a stream that does not exist and
// cannot be created is an error naming it and SetupCommand.
func EnsureStreams(ctx context.Context, js StreamManager, c StreamsConfig) error {
	return ensureStreams(ctx, js, c, MaxAPITimeout)
}

func ensureStreams(ctx context.Context, js StreamManager, c StreamsConfig, timeout time.Duration) error {
	specs := c.Specs()
	errs := make([]error, len(specs))
	var wg sync.WaitGroup
	for i, spec := range specs {
		wg.Go(func() { errs[i] = ensureStream(ctx, js, spec, timeout, c.Log) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func ensureStream(ctx context.Context, js StreamManager, spec jetstream.StreamConfig, timeout time.Duration, log *slog.Logger) error {
	// Most starts find the stream as they want it: reading is cheaper for
	// the meta leader than an update, leaves the stream alone, and is all
	// a service's identity may do in production.
	got, err := streamConfig(ctx, js, spec.Name, timeout)
	switch {
	case err == nil && sameStream(got, spec):
		return nil
	case err == nil:
		return updateStream(ctx, js, got, spec, timeout, log)
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return createStream(ctx, js, spec, timeout)
	}
	return fmt.Errorf("reading stream %s: %w", spec.Name, err)
}

// createStream creates a stream that was not found.
func createStream(ctx context.Context, js StreamManager, spec jetstream.StreamConfig, timeout time.Duration) error {
	actx, cancel := context.WithTimeout(ctx, timeout)
	_, err := js.CreateStream(actx, spec)
	cancel()
	if err == nil {
		return nil
	}
	// Another service created it first (with these settings or others: then
	// this start updates it next time), or the answer was lost.
	if _, rerr := streamConfig(ctx, js, spec.Name, timeout); rerr == nil {
		return nil
	}
	// A refused publish (permission violation) is only seen as a timeout by
	// the requester: the likely cause is named, not asserted.
	return fmt.Errorf("stream %s does not exist and this identity could not create it (%w): "+
		"create the streams with %s, or give this identity STREAM.CREATE", spec.Name, err, SetupCommand)
}

// updateStream updates a stream whose settings differ from spec. Refused (the
// identity may only read streams) or not applied, the stream is used as it is.
func updateStream(ctx context.Context, js StreamManager, got, spec jetstream.StreamConfig, timeout time.Duration, log *slog.Logger) error {
	actx, cancel := context.WithTimeout(ctx, timeout)
	_, err := js.UpdateStream(actx, spec)
	cancel()
	if err == nil {
		return nil
	}
	if now, rerr := streamConfig(ctx, js, spec.Name, timeout); rerr == nil && sameStream(now, spec) {
		return nil // applied, its answer lost
	}
	if log != nil {
		log.Warn("stream settings differ from this service's flags and were not updated; the stream is used as it is "+
			"(in production the setup job owns the streams: run it with these flags to apply them)",
			"stream", spec.Name, "differs", streamDiff(got, spec), "setup", SetupCommand, "err", err)
	}
	return nil
}

// streamConfig reads a stream's configuration.
func streamConfig(ctx context.Context, js StreamManager, name string, timeout time.Duration) (jetstream.StreamConfig, error) {
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st, err := js.Stream(actx, name)
	if err != nil {
		return jetstream.StreamConfig{}, err
	}
	return st.CachedInfo().Config, nil
}

// sameStream reports whether a stream's configuration has what spec asks.
func sameStream(got, spec jetstream.StreamConfig) bool {
	return streamDiff(got, spec) == ""
}

// streamDiff names the settings of got that differ from spec, as
// "max_age 1h0m0s (want 72h0m0s), ..."; empty when none.
func streamDiff(got, spec jetstream.StreamConfig) string {
	var d []string
	add := func(name string, differ bool, have, want any) {
		if differ {
			d = append(d, fmt.Sprintf("%s %v (want %v)", name, have, want))
		}
	}
	add("subjects", !slices.Equal(got.Subjects, spec.Subjects), got.Subjects, spec.Subjects)
	add("replicas", got.Replicas != spec.Replicas, got.Replicas, spec.Replicas)
	add("max_age", got.MaxAge != spec.MaxAge, got.MaxAge, spec.MaxAge)
	add("max_bytes", got.MaxBytes != spec.MaxBytes, got.MaxBytes, spec.MaxBytes)
	add("duplicate_window", got.Duplicates != spec.Duplicates, got.Duplicates, spec.Duplicates)
	add("retention", got.Retention != spec.Retention, got.Retention, spec.Retention)
	add("storage", got.Storage != spec.Storage, got.Storage, spec.Storage)
	add("discard", got.Discard != spec.Discard, got.Discard, spec.Discard)
	return strings.Join(d, ", ")
}

// EnsureStreamsRetry calls EnsureStreams until it succeeds or ctx ends, so a
// service may start before NATS does.
func EnsureStreamsRetry(ctx context.Context, js StreamManager, c StreamsConfig, onErr func(error)) error {
	timeout := APITimeout
	return retry(ctx, func() error {
		err := ensureStreams(ctx, js, c, timeout)
		timeout = min(2*timeout, MaxAPITimeout)
		return err
	}, onErr)
}

// ConsumerManager is the part of JetStream EnsureConsumer needs.
type ConsumerManager interface {
	CreateOrUpdateConsumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error)
	Consumer(ctx context.Context, stream, name string) (jetstream.Consumer, error)
}

// EnsureConsumer creates or updates the durable consumer cfg on stream, as
// EnsureStreams does streams, retrying until it exists with cfg or ctx ends.
func EnsureConsumer(ctx context.Context, js ConsumerManager, stream string, cfg jetstream.ConsumerConfig, onErr func(error)) (jetstream.Consumer, error) {
	var cons jetstream.Consumer
	timeout := APITimeout
	err := retry(ctx, func() error {
		defer func() { timeout = min(2*timeout, MaxAPITimeout) }()
		actx, cancel := context.WithTimeout(ctx, timeout)
		c, err := js.CreateOrUpdateConsumer(actx, stream, cfg)
		cancel()
		if err == nil {
			cons = c
			return nil
		}
		actx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
		if c, ierr := js.Consumer(actx, stream, cfg.Durable); ierr == nil && sameConsumer(c.CachedInfo().Config, cfg) {
			cons = c
			return nil
		}
		return fmt.Errorf("ensuring consumer %s on %s: %w", cfg.Durable, stream, err)
	}, onErr)
	return cons, err
}

// sameConsumer reports whether a consumer's configuration has what cfg asks.
func sameConsumer(got, cfg jetstream.ConsumerConfig) bool {
	return got.FilterSubject == cfg.FilterSubject && slices.Equal(got.FilterSubjects, cfg.FilterSubjects) &&
		got.AckPolicy == cfg.AckPolicy && got.AckWait == cfg.AckWait && got.MaxDeliver == cfg.MaxDeliver &&
		(cfg.MaxAckPending == 0 || got.MaxAckPending == cfg.MaxAckPending)
}

// retry calls f until it returns nil or ctx ends, backing off (with jitter)
// from 100 ms up to 2 s: short enough that a service is ready soon after
// NATS is, when many start at once.
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
		case <-time.After(delay + rand.N(delay/2)):
		}
		delay = min(delay*2, 2*time.Second)
	}
}
