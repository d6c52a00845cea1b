// Command detector consumes whalewatch telemetry from NATS, runs the detection
// rules and publishes threats.
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
	"github.com/whalewatch/whalewatch/services/detector/internal/detector"
)

func main() {
	var cfg detector.Config
	fs := flag.NewFlagSet("detector", flag.ExitOnError)
	cfg.RegisterFlags(fs)
	if err := flagenv.Parse(fs, os.Args[1:], nil); err != nil {
		fmt.Fprintln(os.Stderr, "detector:", err)
		os.Exit(2)
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, "detector: invalid configuration:", err)
		os.Exit(2)
	}
	log := cfg.Log.NewLogger(os.Stderr, "detector")
	reg := admin.NewRegistry()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := detector.Run(ctx, cfg, log, reg); err != nil {
		log.Error("detector failed", "err", err)
		os.Exit(1)
	}
}
