// Command detector consumes whalewatch telemetry from NATS, runs the detection
// rules and publishes threats.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/service"
	"github.com/whalewatch/whalewatch/services/detector/internal/baselinecmd"
	"github.com/whalewatch/whalewatch/services/detector/internal/detector"
	"github.com/whalewatch/whalewatch/services/detector/internal/rules"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "baseline" {
		if err := baselinecmd.Main(context.Background(), os.Args[2:], os.Stdout, os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, "detector baseline:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "rules" {
		// detector rules lint|test ...: check rules offline (see README).
		os.Exit(rules.Main(os.Args[2:], os.Stdout, os.Stderr))
	}
	var cfg detector.Config
	service.Main("detector", &cfg, &cfg.Log, func(ctx context.Context, log *slog.Logger, reg *prometheus.Registry) error {
		return detector.Run(ctx, cfg, log, reg)
	})
}
