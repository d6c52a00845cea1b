// Package indexer writes whalewatch threats, telemetry and response actions
// from NATS into Elasticsearch data streams, where analysts search them in
// Kibana.
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
	"runtime/debug"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/whalewatch/whalewatch/pkg/admin"
	"github.com/whalewatch/whalewatch/pkg/service"
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
	health := newOpsHealth()
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
	srv.AddCheck("elasticsearch-writes", health.check)
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
		if err := InstallTemplatesRetry(ctx, client, cfg.Retention, func(err error) {
			log.Warn("installing Elasticsearch templates, will retry", "err", err)
		}); err != nil {
			return nil // shutting down
		}
		templates.Store(true)
		log.Info("Elasticsearch templates and lifecycle policies installed", "component_template", ComponentTemplate,
			"index_templates", IndexTemplates())
		return New(rt.JS, sink, cfg, health, Version(), log, reg).Run(ctx)
	})
}

func redactedAddresses(c ESConfig) []string {
	var out []string
	for _, u := range c.Addresses() {
		out = append(out, redactURL(u))
	}
	return out
}

// Version is the indexer's build version (the main module's), "dev" when
// unknown; it becomes agent.version of documents the indexer completes.
func Version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}
