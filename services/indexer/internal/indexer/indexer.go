// Package indexer writes whalewatch threats and telemetry from NATS into
// Elasticsearch data streams, where analysts search them in Kibana.
//
// Nothing is lost while Elasticsearch is down: an event is acked only once
// Elasticsearch stored it (or had stored it before: _id is event.id), so
// JetStream keeps every other event and redelivers it, for as long as the
// stream's retention (max age, max bytes) keeps it. A document Elasticsearch
// refuses for good (a mapping conflict) is dead-lettered with the reason.
package indexer

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/whalewatch/whalewatch/pkg/admin"
	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/service"
	"github.com/whalewatch/whalewatch/pkg/subject"
)

// Durable consumer names; dead letters go to whalewatch.deadletter.<name>.
const (
	ConsumerThreats   = "indexer-threats"
	ConsumerTelemetry = "indexer-telemetry"
)

// Run connects to NATS and Elasticsearch and indexes until ctx ends.
func Run(ctx context.Context, cfg Config, log *slog.Logger, reg *prometheus.Registry) error {
	return run(ctx, cfg, log, reg, nil)
}

// run is Run; started, when not nil, is given the admin server once it exists.
func run(ctx context.Context, cfg Config, log *slog.Logger, reg *prometheus.Registry, started func(*admin.Server)) error {
	client, err := NewClient(cfg.Elasticsearch)
	if err != nil {
		return err
	}
	sink := NewESSink(client, cfg.Elasticsearch, log, reg)
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), cfg.Admin.ShutdownTimeout)
		defer cancel()
		if err := sink.Close(closeCtx); err != nil {
			log.Warn("closing the elasticsearch sink", "err", err)
		}
	}()
	rt, err := service.Connect("indexer", cfg.NATS, cfg.Admin, log, reg)
	if err != nil {
		return err
	}
	defer rt.Close()
	srv := rt.Admin

	var templates atomic.Bool
	srv.AddCheck("elasticsearch", Ping(client))
	srv.AddCheck("templates", func(context.Context) error {
		if !templates.Load() {
			return errors.New("index templates not installed yet")
		}
		return nil
	})
	if started != nil {
		started(srv)
	}
	log.Info("starting", "elasticsearch", redactedAddresses(cfg.Elasticsearch), "namespace", cfg.Elasticsearch.Namespace,
		"index_telemetry", cfg.IndexTelemetry)

	return rt.Serve(ctx, cfg.NATS.Streams, func(ctx context.Context, _ *errgroup.Group) error {
		// Events wait in JetStream until the data streams will get our mappings.
		if err := InstallTemplatesRetry(ctx, client, func(err error) {
			log.Warn("installing Elasticsearch templates, will retry", "err", err)
		}); err != nil {
			return nil // shutting down
		}
		templates.Store(true)
		log.Info("Elasticsearch templates installed", "component_template", ComponentTemplate, "index_template", IndexTemplate)
		return New(rt.JS, sink, cfg, log, reg).Run(ctx)
	})
}

func redactedAddresses(c ESConfig) []string {
	var out []string
	for _, u := range c.Addresses() {
		out = append(out, redactURL(u))
	}
	return out
}

// Indexer runs the consumers that feed a Sink.
type Indexer struct {
	cfg     Config
	js      bus.JetStream
	sink    Sink
	metrics *bus.ConsumerMetrics
	log     *slog.Logger
}

// New returns an indexer consuming from js into sink.
func New(js bus.JetStream, sink Sink, cfg Config, log *slog.Logger, reg prometheus.Registerer) *Indexer {
	return &Indexer{cfg: cfg, js: js, sink: sink, metrics: bus.NewConsumerMetrics(reg), log: log}
}

// Consumers describes the durable consumers the indexer runs: threats always,
// telemetry when enabled. MaxDeliver is unlimited: an event Elasticsearch
// cannot take now is retried until it can, however long the outage.
func (ix *Indexer) Consumers() []bus.ConsumerConfig {
	c := func(stream, durable, filter string) bus.ConsumerConfig {
		return bus.ConsumerConfig{
			Stream:         stream,
			Durable:        durable,
			FilterSubjects: []string{filter},
			BatchSize:      ix.cfg.BatchSize,
			FlushInterval:  ix.cfg.FlushInterval,
			// A batch may take several requests of up to Timeout each; a
			// redelivery while one is in flight is harmless (409).
			AckWait:      max(30*time.Second, 3*ix.cfg.Elasticsearch.Timeout),
			MaxDeliver:   -1,
			MaxBackoff:   ix.cfg.RetryMaxBackoff,
			DrainTimeout: ix.cfg.Admin.ShutdownTimeout,
		}
	}
	out := []bus.ConsumerConfig{c(bus.StreamThreats, ConsumerThreats, subject.AllThreats)}
	if ix.cfg.IndexTelemetry {
		out = append(out, c(bus.StreamTelemetry, ConsumerTelemetry, subject.AllTelemetry))
	}
	return out
}

// Run consumes until ctx ends, then drains.
func (ix *Indexer) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	for _, cc := range ix.Consumers() {
		c := bus.NewConsumer(ix.js, cc, bus.HandlerFunc(ix.sink.Write), ix.metrics, ix.log)
		g.Go(func() error { return c.Run(gctx) })
	}
	return g.Wait()
}
