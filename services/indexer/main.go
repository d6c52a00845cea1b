// Command indexer bulk-indexes whalewatch threats, telemetry and response
// actions from NATS into Elasticsearch data streams.
//
//	indexer [flags]         index until stopped
//	indexer setup [flags]   install the Elasticsearch templates and lifecycle
//	                        policies and the Kibana saved objects, then exit
package main

import (
	"context"
	"log/slog"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/service"
	"github.com/whalewatch/whalewatch/services/indexer/internal/indexer"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "setup" {
		// service.Main reads os.Args[1:]: drop the subcommand.
		os.Args = append(os.Args[:1], os.Args[2:]...)
		var cfg indexer.SetupConfig
		service.Main("indexer-setup", &cfg, &cfg.Log, func(ctx context.Context, log *slog.Logger, _ *prometheus.Registry) error {
			return indexer.Setup(ctx, cfg, log)
		})
		return
	}
	var cfg indexer.Config
	service.Main("indexer", &cfg, &cfg.Log, func(ctx context.Context, log *slog.Logger, reg *prometheus.Registry) error {
		return indexer.Run(ctx, cfg, log, reg)
	})
}
