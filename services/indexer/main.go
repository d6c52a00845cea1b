// Command indexer bulk-indexes whalewatch threats and telemetry from NATS
// into Elasticsearch data streams.
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
	"github.com/whalewatch/whalewatch/services/indexer/internal/indexer"
)

func main() {
	var cfg indexer.Config
	fs := flag.NewFlagSet("indexer", flag.ExitOnError)
	cfg.RegisterFlags(fs)
	if err := flagenv.Parse(fs, os.Args[1:], nil); err != nil {
		fmt.Fprintln(os.Stderr, "indexer:", err)
		os.Exit(2)
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, "indexer: invalid configuration:", err)
		os.Exit(2)
	}
	log := cfg.Log.NewLogger(os.Stderr, "indexer")
	reg := admin.NewRegistry()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := indexer.Run(ctx, cfg, log, reg); err != nil {
		log.Error("indexer failed", "err", err)
		os.Exit(1)
	}
}
