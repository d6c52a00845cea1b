// Command collector watches the Docker engine of its host and publishes
// container telemetry (lifecycle, configuration, processes) to NATS.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/whalewatch/whalewatch/pkg/admin"
	"github.com/whalewatch/whalewatch/pkg/flagenv"
	"github.com/whalewatch/whalewatch/services/collector/internal/collector"
)

func main() {
	var cfg collector.Config
	fs := flag.NewFlagSet("collector", flag.ExitOnError)
	cfg.RegisterFlags(fs)
	if err := flagenv.Parse(fs, os.Args[1:], nil); err != nil {
		fmt.Fprintln(os.Stderr, "collector:", err)
		os.Exit(2)
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, "collector: invalid configuration:", err)
		os.Exit(2)
	}
	log := cfg.Log.NewLogger(os.Stderr, "collector")
	reg := admin.NewRegistry()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := collector.Run(ctx, cfg, log, reg); err != nil {
		log.Error("collector failed", "err", err)
		os.Exit(1)
	}
}
