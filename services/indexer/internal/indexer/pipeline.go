package indexer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

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

// Indexer writes batches pulled from JetStream to a Sink with parallel
// workers: a bus.BatchConsumer (batch pulls bounded by count and bytes,
// several batches in flight, which is what throughput needs) with package
// bus's ack discipline. A message is acked only when the sink stored its
// document, nak'ed with a growing delay when it may be stored later,
// dead-lettered (copied to whalewatch.deadletter.<consumer> with the reason,
// then terminated) when it never can. MaxDeliver is unlimited: a document
// Elasticsearch cannot take now is retried until it can, however long the
// outage.
type Indexer struct {
	cfg    Config
	js     bus.JetStream
	sink   Sink
	prep   *preparer
	health *opsHealth
	bus    *bus.ConsumerMetrics
	log    *slog.Logger
}

// New returns an indexer consuming from js into sink. health, when not nil,
// learns of operations errors (see OpsError).
func New(js bus.JetStream, sink Sink, cfg Config, health *opsHealth, version string, log *slog.Logger, reg prometheus.Registerer) *Indexer {
	if health == nil {
		health = newOpsHealth()
	}
	return &Indexer{cfg: cfg, js: js, sink: sink, prep: newPreparer(cfg.Elasticsearch.Namespace, version, newDocumentsCounter(reg)),
		health: health, bus: bus.NewConsumerMetrics(reg), log: log}
}

// sources lists the consumers: threats and response actions always,
// telemetry when enabled.
func (ix *Indexer) sources() []bus.BatchSource {
	out := []bus.BatchSource{
		{Stream: bus.StreamThreats, Durable: ConsumerThreats, FilterSubjects: []string{subject.AllThreats}},
		{Stream: bus.StreamActions, Durable: ConsumerResponse, FilterSubjects: []string{subject.AllRequests, subject.AllResults}},
	}
	if ix.cfg.IndexTelemetry {
		out = append(out, bus.BatchSource{Stream: bus.StreamTelemetry, Durable: ConsumerTelemetry, FilterSubjects: []string{subject.AllTelemetry}})
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
	return bus.NewBatchConsumer(ix.js, bus.BatchConfig{
		Sources:       ix.sources(),
		BatchSize:     ix.cfg.BatchSize,
		MaxBytes:      ix.fetchBytes(),
		Workers:       ix.cfg.Workers,
		FlushInterval: ix.cfg.FlushInterval,
		// A batch may take several requests of up to Timeout each
		// (Validate); a redelivery while one is in flight is harmless (409).
		AckWait:      ix.cfg.AckWait,
		MaxDeliver:   -1,
		MaxBackoff:   ix.cfg.RetryMaxBackoff,
		DrainTimeout: ix.cfg.Admin.ShutdownTimeout,
	}, ix, ix.bus, ix.log).Run(ctx)
}

// HandleBatch prepares and writes one batch: an error wrapping
// event.ErrInvalid for a payload that can never be a document, the sink's
// answer for the others. It keeps the readiness of writes (opsHealth) up to
// date with those answers.
func (ix *Indexer) HandleBatch(ctx context.Context, payloads [][]byte) []error {
	errs := make([]error, len(payloads))
	docs := make([]Doc, 0, len(payloads))
	at := make([]int, 0, len(payloads)) // docs[j] is payloads[at[j]]
	for i, data := range payloads {
		d, err := ix.prep.prepare(data)
		if err != nil {
			errs[i] = err
			continue
		}
		docs = append(docs, d)
		at = append(at, i)
	}
	if len(docs) == 0 {
		return errs
	}
	werrs := ix.sink.Write(ctx, docs)
	if len(werrs) != len(docs) {
		// A sink bug; retry everything rather than guess.
		err := fmt.Errorf("sink returned %d results for %d documents", len(werrs), len(docs))
		ix.log.Error("sink contract violated", "err", err)
		werrs = make([]error, len(docs))
		for i := range werrs {
			werrs[i] = err
		}
	}
	for j, err := range werrs {
		var ops *OpsError
		switch {
		case err == nil:
			ix.health.stored(docs[j].Dataset)
		case errors.As(err, &ops):
			ix.health.refused(docs[j].Dataset, err)
		}
		errs[at[j]] = err
	}
	return errs
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
