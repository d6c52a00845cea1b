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
