// Command collector watches the Docker engine of its host and publishes
// container telemetry (lifecycle, configuration, processes) to NATS.
package main

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/service"
	"github.com/whalewatch/whalewatch/services/collector/internal/collector"
)

func main() {
	var cfg collector.Config
	service.Main("collector", &cfg, &cfg.Log, func(ctx context.Context, log *slog.Logger, reg *prometheus.Registry) error {
		return collector.Run(ctx, cfg, log, reg)
	})
}
