// Command indexer bulk-indexes whalewatch threats, telemetry and response
// actions from NATS into Elasticsearch data streams.
//
//	indexer [flags]         index until stopped
//	indexer setup [flags]   install the Elasticsearch templates and lifecycle
//	                        policies and the Kibana saved objects, then exit
//	indexer streams [flags] create or update the NATS streams (the setup
//	                        identity's job in production), then exit
package main

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/service"
	"github.com/whalewatch/whalewatch/services/indexer/internal/indexer"
)

func main() {
	var setup indexer.SetupConfig
	var cfg indexer.Config
	service.Main("indexer", &cfg, &cfg.Log, func(ctx context.Context, log *slog.Logger, reg *prometheus.Registry) error {
		return indexer.Run(ctx, cfg, log, reg)
	}, service.Sub("setup", "install the Elasticsearch templates and lifecycle policies and the Kibana saved objects, then exit",
		&setup, &setup.Log, func(ctx context.Context, log *slog.Logger, _ *prometheus.Registry) error {
			return indexer.Setup(ctx, setup, log)
		}), service.StreamsCommand("indexer"))
}
