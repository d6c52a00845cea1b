package indexer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/subject"
)

// Durable consumer names; dead letters go to whalewatch.deadletter.<name>.
const (
	ConsumerThreats   = "indexer-threats"
	ConsumerTelemetry = "indexer-telemetry"
	ConsumerResponse  = "indexer-response"
)

// source is one durable consumer the indexer reads.
type source struct {
	stream, durable string
	filters         []string
}

// batch is what one Fetch returned.
type batch struct {
	src  source
	msgs []jetstream.Msg
}

// Indexer pulls batches from JetStream and writes them to a Sink with
// parallel workers, with the ack discipline of package bus: a message is
// acked only when the sink stored its document, nak'ed with a growing delay
// when it may be stored later, dead-lettered (copied to
// whalewatch.deadletter.<consumer> with the reason, then terminated) when it
// never can. MaxDeliver is unlimited: a document Elasticsearch cannot take
// now is retried until it can, however long the outage.
//
// It is bus.Consumer's contract with batch pulls (Fetch with a count and a
// byte bound) and several batches in flight, which is what throughput needs.
type Indexer struct {
	cfg     Config
	js      bus.JetStream
	sink    Sink
	prep    *preparer
	health  *opsHealth
	metrics *pipelineMetrics
	log     *slog.Logger
}

type pipelineMetrics struct {
	messages    *prometheus.CounterVec
	deadLetters *prometheus.CounterVec
	duration    *prometheus.HistogramVec
}

// New returns an indexer consuming from js into sink. health, when not nil,
// learns of operations errors (see OpsError).
func New(js bus.JetStream, sink Sink, cfg Config, health *opsHealth, version string, log *slog.Logger, reg prometheus.Registerer) *Indexer {
	m := &pipelineMetrics{
		// The names and labels of package bus's consumer metrics, so that
		// dashboards and alerts on them cover the indexer.
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whalewatch_bus_consumed_total",
			Help: "Messages consumed, by consumer and outcome (ack, nak, dead_letter).",
		}, []string{"consumer", "outcome"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whalewatch_bus_dead_letters_total",
			Help: "Messages sent to the dead-letter subject, by consumer and reason.",
		}, []string{"consumer", "reason"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "whalewatch_bus_handle_seconds",
			Help:    "Time the handler took per batch.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
		}, []string{"consumer"}),
	}
	reg.MustRegister(m.messages, m.deadLetters, m.duration)
	if health == nil {
		health = newOpsHealth()
	}
	return &Indexer{cfg: cfg, js: js, sink: sink, prep: newPreparer(cfg.Elasticsearch.Namespace, version),
		health: health, metrics: m, log: log}
}

// sources lists the consumers: threats and response actions always,
// telemetry when enabled.
func (ix *Indexer) sources() []source {
	out := []source{
		{bus.StreamThreats, ConsumerThreats, []string{subject.AllThreats}},
		{bus.StreamActions, ConsumerResponse, []string{subject.AllRequests, subject.AllResults}},
	}
	if ix.cfg.IndexTelemetry {
		out = append(out, source{bus.StreamTelemetry, ConsumerTelemetry, []string{subject.AllTelemetry}})
	}
	return out
}

// fetchBytes bounds one pull: a message larger than the bound would stall
// the consumer, so it is never below two of the largest documents.
func (ix *Indexer) fetchBytes() int {
	return max(ix.cfg.Elasticsearch.MaxBulkBytes, 2*event.MaxDocument+64<<10)
}

// Run consumes until ctx ends. Then it stops pulling, writes what it already
// pulled (for at most the shutdown timeout) and returns nil.
func (ix *Indexer) Run(ctx context.Context) error {
	batches := make(chan batch, ix.cfg.Workers)
	// Work on pulled messages may outlive ctx by the shutdown timeout.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(ix.cfg.Admin.ShutdownTimeout, cancelWork) })
	defer stop()

	var workers sync.WaitGroup
	for range ix.cfg.Workers {
		workers.Go(func() {
			for b := range batches {
				ix.process(work, b)
			}
		})
	}
	var pullers sync.WaitGroup
	for _, src := range ix.sources() {
		pullers.Go(func() { ix.pull(ctx, src, batches) })
	}
	pullers.Wait()
	close(batches)
	workers.Wait()
	return nil
}

// pull creates src's durable consumer (retrying until NATS answers) and
// fetches batches into out until ctx ends.
func (ix *Indexer) pull(ctx context.Context, src source, out chan<- batch) {
	log := ix.log.With("consumer", src.durable)
	var cons jetstream.Consumer
	err := retry(ctx, func() error {
		var err error
		cons, err = ix.js.CreateOrUpdateConsumer(ctx, src.stream, jetstream.ConsumerConfig{
			Durable:        src.durable,
			FilterSubjects: src.filters,
			AckPolicy:      jetstream.AckExplicitPolicy,
			// A batch may take several requests of up to Timeout each
			// (Validate); a redelivery while one is in flight is harmless (409).
			AckWait:    ix.cfg.AckWait,
			MaxDeliver: -1,
			// Every worker busy with a batch of this consumer, one queued,
			// one being pulled.
			MaxAckPending: (ix.cfg.Workers + 2) * ix.cfg.BatchSize,
			DeliverPolicy: jetstream.DeliverAllPolicy,
		})
		return err
	}, func(err error) { log.Warn("creating consumer, will retry", "stream", src.stream, "err", err) })
	if err != nil {
		return // ctx ended before NATS answered
	}
	log.Info("consuming", "stream", src.stream, "filter", src.filters)
	wait := max(ix.cfg.FlushInterval, 10*time.Millisecond)
	delay := 100 * time.Millisecond
	for ctx.Err() == nil {
		mb, err := cons.Fetch(ix.cfg.BatchSize, jetstream.FetchMaxBytes(ix.fetchBytes()), jetstream.FetchMaxWait(wait))
		var msgs []jetstream.Msg
		if err == nil {
			for m := range mb.Messages() {
				msgs = append(msgs, m)
			}
			err = mb.Error()
		}
		if len(msgs) > 0 {
			out <- batch{src: src, msgs: msgs} // workers run until out is closed
		}
		if err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, jetstream.ErrNoMessages) {
			if ctx.Err() == nil {
				log.Debug("fetching, will retry", "err", err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(delay):
			}
			delay = min(2*delay, 5*time.Second)
			continue
		}
		delay = 100 * time.Millisecond
	}
}

// process prepares, writes and settles one batch.
func (ix *Indexer) process(ctx context.Context, b batch) {
	docs := make([]Doc, 0, len(b.msgs))
	kept := make([]jetstream.Msg, 0, len(b.msgs))
	for _, m := range b.msgs {
		d, err := ix.prep.prepare(m.Data())
		if err != nil {
			ix.deadLetter(ctx, b.src, m, bus.ReasonInvalid, err)
			continue
		}
		docs = append(docs, d)
		kept = append(kept, m)
	}
	if len(docs) == 0 {
		return
	}
	start := time.Now()
	errs := ix.sink.Write(ctx, docs)
	ix.metrics.duration.WithLabelValues(b.src.durable).Observe(time.Since(start).Seconds())
	if len(errs) != len(docs) {
		// A sink bug; retry everything rather than guess.
		err := fmt.Errorf("sink returned %d results for %d documents", len(errs), len(docs))
		ix.log.Error("sink contract violated", "err", err)
		errs = make([]error, len(docs))
		for i := range errs {
			errs[i] = err
		}
	}
	acked, naked := 0, 0
	for i, m := range kept {
		err := errs[i]
		var ops *OpsError
		switch {
		case err == nil:
			ix.health.stored(docs[i].Dataset)
			if aerr := m.Ack(); aerr != nil {
				ix.log.Warn("ack failed; the message will be redelivered", "subject", m.Subject(), "err", aerr)
			}
			acked++
		case bus.IsPermanent(err):
			ix.deadLetter(ctx, b.src, m, bus.ReasonPermanent, err)
		default:
			if errors.As(err, &ops) {
				ix.health.refused(docs[i].Dataset, err)
			}
			delivered := uint64(1)
			if md, merr := m.Metadata(); merr == nil {
				delivered = md.NumDelivered
			}
			delay := bus.Backoff(delivered, ix.cfg.RetryMaxBackoff)
			if ctx.Err() == nil && naked == 0 { // one line per batch is enough
				ix.log.Warn("indexing failed, will retry", "consumer", b.src.durable, "subject", m.Subject(),
					"deliveries", delivered, "retry_in", delay, "err", err)
			}
			_ = m.NakWithDelay(delay)
			naked++
		}
	}
	ix.metrics.messages.WithLabelValues(b.src.durable, "ack").Add(float64(acked))
	ix.metrics.messages.WithLabelValues(b.src.durable, "nak").Add(float64(naked))
}

// deadLetter copies m to the consumer's dead-letter subject with the reason,
// then terminates it. If the copy cannot be stored, m is nak'ed instead: a
// message is never dropped silently. The copy's Nats-Msg-Id is the stream
// sequence, so dead-lettering twice (a lost Term) stores one copy.
func (ix *Indexer) deadLetter(ctx context.Context, src source, m jetstream.Msg, reason string, cause error) {
	seq, delivered := "", ""
	if md, err := m.Metadata(); err == nil {
		seq = strconv.FormatUint(md.Sequence.Stream, 10)
		delivered = strconv.FormatUint(md.NumDelivered, 10)
	}
	dl := nats.NewMsg(subject.DeadLetter(src.durable))
	dl.Data = m.Data()
	dl.Header.Set(bus.HeaderReason, reason)
	dl.Header.Set(bus.HeaderError, event.Truncate(cause.Error(), 1024))
	dl.Header.Set(bus.HeaderOriginalSubject, m.Subject())
	dl.Header.Set(bus.HeaderStreamSequence, seq)
	dl.Header.Set(bus.HeaderDeliveries, delivered)
	pubCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := ix.js.PublishMsg(pubCtx, dl, jetstream.WithMsgID(src.durable+"-"+seq)); err != nil {
		ix.log.Error("dead-lettering failed, will retry the message", "subject", m.Subject(), "err", err)
		_ = m.NakWithDelay(time.Second)
		ix.metrics.messages.WithLabelValues(src.durable, "nak").Inc()
		return
	}
	_ = m.Term()
	ix.log.Warn("message dead-lettered", "consumer", src.durable, "subject", m.Subject(), "reason", reason,
		"err", event.Truncate(cause.Error(), 512))
	ix.metrics.deadLetters.WithLabelValues(src.durable, reason).Inc()
	ix.metrics.messages.WithLabelValues(src.durable, "dead_letter").Inc()
}

// retry calls f until it returns nil or ctx ends, backing off from 100 ms to
// 5 s. It returns ctx's error when ctx ended first.
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
		onErr(err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// opsHealth is the readiness of writes: failing while Elasticsearch refuses
// documents of some dataset for an operations reason, until one of that
// dataset is stored again.
type opsHealth struct {
	mu       sync.Mutex
	problems map[string]error // by dataset
}

func newOpsHealth() *opsHealth { return &opsHealth{problems: map[string]error{}} }

func (h *opsHealth) refused(dataset string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.problems[dataset] = err
}

func (h *opsHealth) stored(dataset string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.problems) > 0 {
		delete(h.problems, dataset)
	}
}

// check is the readiness check.
func (h *opsHealth) check(context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	var errs []error
	for ds, err := range h.problems {
		errs = append(errs, fmt.Errorf("elasticsearch refuses %s documents: %w", ds, err))
	}
	return errors.Join(errs...)
}
