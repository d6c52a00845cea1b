package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// BatchHandler does a batch consumer's work on the raw payloads of a batch,
// for handlers that never need an event.Event (the indexer stores the JSON as
// it arrived). It returns one error per payload, in order, meaning what
// Handler's errors mean; an error wrapping event.ErrInvalid dead-letters the
// message with reason invalid, any other Permanent error with reason
// permanent.
//
// The payloads belong to the handler until it returns; it must not keep them.
type BatchHandler interface {
	HandleBatch(ctx context.Context, payloads [][]byte) []error
}

// BatchHandlerFunc adapts a function to BatchHandler.
type BatchHandlerFunc func(ctx context.Context, payloads [][]byte) []error

// HandleBatch calls f.
func (f BatchHandlerFunc) HandleBatch(ctx context.Context, payloads [][]byte) []error {
	return f(ctx, payloads)
}

// BatchSource is one durable consumer a BatchConsumer pulls from.
type BatchSource struct {
	Stream         string
	Durable        string
	FilterSubjects []string
}

// BatchConfig describes a BatchConsumer: its sources, and the bounds and
// timings every source shares.
type BatchConfig struct {
	Sources []BatchSource
	// BatchSize is the most messages one pull takes from a source.
	BatchSize int
	// MaxBytes bounds the payload bytes of one pull. It must exceed the
	// largest message, which would otherwise never be delivered.
	MaxBytes int
	// Workers is how many batches are handled in parallel, whatever their
	// source: several batches in flight is what throughput needs.
	Workers int
	// FlushInterval is how long a pull waits to fill (at least 10 ms).
	FlushInterval time.Duration
	// AckWait, MaxDeliver, MaxBackoff and DrainTimeout are ConsumerConfig's.
	AckWait      time.Duration
	MaxDeliver   int
	MaxBackoff   time.Duration
	DrainTimeout time.Duration
}

// BatchConsumer runs durable consumers with batch pulls (Fetch, bounded by
// count and bytes) into a pool of workers, with Consumer's ack discipline,
// written once in Consumer: acked only when the handler says the effect
// happened, nak'ed with a growing delay, dead-lettered with the reason, held
// with in-progress acks from the pull until settled (a batch waiting for a
// worker included).
type BatchConsumer struct {
	cfg     BatchConfig
	js      JetStream
	handler BatchHandler
	metrics *ConsumerMetrics
	log     *slog.Logger
}

// pulled is what one Fetch returned, and the consumer that settles it.
type pulled struct {
	c    *Consumer
	msgs []jetstream.Msg
}

// NewBatchConsumer returns a batch consumer; Run starts it.
func NewBatchConsumer(js JetStream, cfg BatchConfig, h BatchHandler, m *ConsumerMetrics, log *slog.Logger) *BatchConsumer {
	cfg.BatchSize = max(cfg.BatchSize, 1)
	cfg.Workers = max(cfg.Workers, 1)
	cfg.FlushInterval = max(cfg.FlushInterval, 10*time.Millisecond)
	return &BatchConsumer{cfg: cfg, js: js, handler: h, metrics: m, log: log}
}

// Run creates (or updates) every source's durable consumer, retrying until
// NATS answers, and handles batches until ctx ends. Then it stops pulling,
// handles what was already pulled (for at most DrainTimeout) and returns nil.
func (b *BatchConsumer) Run(ctx context.Context) error {
	batches := make(chan pulled, b.cfg.Workers)
	consumers := make([]*Consumer, len(b.cfg.Sources))
	for i, src := range b.cfg.Sources {
		consumers[i] = NewConsumer(b.js, ConsumerConfig{
			Stream:         src.Stream,
			Durable:        src.Durable,
			FilterSubjects: src.FilterSubjects,
			BatchSize:      b.cfg.BatchSize,
			AckWait:        b.cfg.AckWait,
			MaxDeliver:     b.cfg.MaxDeliver,
			// Every worker busy with a batch of this source, one queued,
			// one being pulled.
			MaxAckPending: (b.cfg.Workers + 2) * b.cfg.BatchSize,
			MaxBackoff:    b.cfg.MaxBackoff,
			DrainTimeout:  b.cfg.DrainTimeout,
		}, nil, b.metrics, b.log)
	}
	drain := consumers[0].cfg.DrainTimeout // after defaults
	// Work on pulled messages may outlive ctx by DrainTimeout.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(drain, cancelWork) })
	defer stop()

	var workers sync.WaitGroup
	for range b.cfg.Workers {
		workers.Go(func() {
			for p := range batches {
				b.process(work, p)
			}
		})
	}
	var pullers sync.WaitGroup
	for _, c := range consumers {
		pullers.Go(func() { b.pull(ctx, c, batches) })
	}
	pullers.Wait()
	close(batches)
	workers.Wait()
	return nil
}

// pull creates c's durable consumer and fetches batches into out until ctx
// ends. Each Fetch is a new pull request of at most FlushInterval, so a
// consumer leader that went away costs one such wait: the next request goes
// to the new leader.
func (b *BatchConsumer) pull(ctx context.Context, c *Consumer, out chan<- pulled) {
	cons, err := EnsureConsumer(ctx, c.js, c.cfg.Stream, c.jetStreamConfig(), func(err error) {
		c.log.Warn("creating consumer, will retry", "stream", c.cfg.Stream, "err", err)
	})
	if err != nil {
		return // ctx ended before NATS answered
	}
	c.log.Info("consuming", "stream", c.cfg.Stream, "filter", c.cfg.FilterSubjects)
	delay := firstPullRetry
	for ctx.Err() == nil {
		mb, err := cons.Fetch(b.cfg.BatchSize, jetstream.FetchMaxBytes(b.cfg.MaxBytes), jetstream.FetchMaxWait(b.cfg.FlushInterval))
		var msgs []jetstream.Msg
		err = c.take(mb, err, func(m jetstream.Msg) { msgs = append(msgs, m) }) // held until settled, however long it is queued
		if len(msgs) > 0 {
			out <- pulled{c: c, msgs: msgs} // workers run until out is closed
		}
		if err != nil && !fetchEnded(err) {
			delay = c.pullFailed(ctx, err, delay)
			continue
		}
		delay = firstPullRetry
	}
}

// process hands one batch to the handler and settles each message.
func (b *BatchConsumer) process(ctx context.Context, p pulled) {
	c := p.c
	payloads := make([][]byte, len(p.msgs))
	for i, m := range p.msgs {
		payloads[i] = m.Data()
	}
	defer c.release(p.msgs)
	start := time.Now()
	errs := b.handler.HandleBatch(ctx, payloads)
	c.metrics.duration.WithLabelValues(c.cfg.Durable).Observe(time.Since(start).Seconds())
	if len(errs) != len(p.msgs) {
		// A handler bug; retry everything rather than guess.
		err := fmt.Errorf("handler returned %d results for %d messages", len(errs), len(p.msgs))
		c.log.Error("handler contract violated", "err", err)
		errs = make([]error, len(p.msgs))
		for i := range errs {
			errs[i] = err
		}
	}
	c.settleAll(ctx, p.msgs, errs)
}

// settleAll settles msgs by errs; one whose error wraps event.ErrInvalid
// is dead-lettered as invalid, as Consumer does with what it cannot decode.
func (c *Consumer) settleAll(ctx context.Context, msgs []jetstream.Msg, errs []error) {
	warn := true // one retry line per batch is enough
	for i, m := range msgs {
		if errs[i] != nil && errors.Is(errs[i], event.ErrInvalid) {
			c.deadLetter(ctx, m, ReasonInvalid, errs[i])
			continue
		}
		if c.settle(ctx, m, errs[i], warn) == outcomeNak {
			warn = false
		}
	}
}
