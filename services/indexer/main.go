// Command indexer bulk-indexes whalewatch threats and telemetry from NATS
// into Elasticsearch data streams.
package main

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/service"
	"github.com/whalewatch/whalewatch/services/indexer/internal/indexer"
)

func main() {
	var cfg indexer.Config
	service.Main("indexer", &cfg, &cfg.Log, func(ctx context.Context, log *slog.Logger, reg *prometheus.Registry) error {
		return indexer.Run(ctx, cfg, log, reg)
	})
}
