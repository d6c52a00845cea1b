package bus

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
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

// EnsureStreams creates or updates every stream so that it matches c. It is
// idempotent: every service calls it at start, in any order, and the streams
// are ensured at once rather than one after another. Each request may take
// MaxAPITimeout (EnsureStreamsRetry starts shorter).
func EnsureStreams(ctx context.Context, js StreamManager, c StreamsConfig) error {
	return ensureStreams(ctx, js, c, MaxAPITimeout)
}

func ensureStreams(ctx context.Context, js StreamManager, c StreamsConfig, timeout time.Duration) error {
	specs := c.Specs()
	errs := make([]error, len(specs))
	var wg sync.WaitGroup
	for i, spec := range specs {
		wg.Go(func() { errs[i] = ensureStream(ctx, js, spec, timeout) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func ensureStream(ctx context.Context, js StreamManager, spec jetstream.StreamConfig, timeout time.Duration) error {
	// Most starts find the stream as they want it: reading is cheaper for
	// the meta leader than an update, and leaves the stream alone.
	if streamIs(ctx, js, spec, timeout) {
		return nil
	}
	actx, cancel := context.WithTimeout(ctx, timeout)
	_, err := js.CreateOrUpdateStream(actx, spec)
	cancel()
	// A create that another service made first with the same configuration,
	// or whose answer was lost, is there to read.
	if err == nil || streamIs(ctx, js, spec, timeout) {
		return nil
	}
	return fmt.Errorf("ensuring stream %s: %w", spec.Name, err)
}

// streamIs reports whether the stream exists with what spec asks.
func streamIs(ctx context.Context, js StreamManager, spec jetstream.StreamConfig, timeout time.Duration) bool {
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st, err := js.Stream(actx, spec.Name)
	return err == nil && sameStream(st.CachedInfo().Config, spec)
}

// sameStream reports whether a stream's configuration has what spec asks.
func sameStream(got, spec jetstream.StreamConfig) bool {
	return slices.Equal(got.Subjects, spec.Subjects) && got.Replicas == spec.Replicas &&
		got.MaxAge == spec.MaxAge && got.MaxBytes == spec.MaxBytes && got.Duplicates == spec.Duplicates &&
		got.Retention == spec.Retention && got.Storage == spec.Storage && got.Discard == spec.Discard
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
