// Command notifier consumes whalewatch threats from NATS and posts each one
// to Slack (incoming webhook or chat.postMessage) and, optionally, to stdout.
package main

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/service"
	"github.com/whalewatch/whalewatch/services/notifier/internal/notifier"
)

func main() {
	var cfg notifier.Config
	service.Main("notifier", &cfg, &cfg.Log, func(ctx context.Context, log *slog.Logger, reg *prometheus.Registry) error {
		return notifier.Run(ctx, cfg, log, reg)
	})
}
