// Command detector consumes whalewatch telemetry from NATS, runs the detection
// rules and publishes threats.
package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/service"
	"github.com/whalewatch/whalewatch/services/detector/internal/baselinecmd"
	"github.com/whalewatch/whalewatch/services/detector/internal/detector"
	"github.com/whalewatch/whalewatch/services/detector/internal/rules"
)

func main() {
	var cfg detector.Config
	service.Main("detector", &cfg, &cfg.Log, func(ctx context.Context, log *slog.Logger, reg *prometheus.Registry) error {
		return detector.Run(ctx, cfg, log, reg)
	},
		service.Command{Name: "rules", Usage: "lint, test or document rules offline (detector rules -h)", Run: func(_ context.Context, args []string, env service.Env) int {
			return rules.Main(args, env.Stdout, env.Stderr)
		}},
		service.Command{Name: "baseline", Usage: "show, export, import or reset learned baselines (detector baseline -h)", Run: func(ctx context.Context, args []string, env service.Env) int {
			if err := baselinecmd.Main(ctx, args, env.Stdout, env.Stderr); err != nil {
				fmt.Fprintln(env.Stderr, "detector baseline:", err)
				return 1
			}
			return 0
		}},
	)
}
