// Command notifier consumes whalewatch threats from NATS and posts each one
// to Slack (incoming webhook or chat.postMessage) and, optionally, to stdout.
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
	"github.com/whalewatch/whalewatch/services/notifier/internal/notifier"
)

func main() {
	var cfg notifier.Config
	fs := flag.NewFlagSet("notifier", flag.ExitOnError)
	cfg.RegisterFlags(fs)
	if err := flagenv.Parse(fs, os.Args[1:], nil); err != nil {
		fmt.Fprintln(os.Stderr, "notifier:", err)
		os.Exit(2)
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, "notifier: invalid configuration:", err)
		os.Exit(2)
	}
	log := cfg.Log.NewLogger(os.Stderr, "notifier")
	reg := admin.NewRegistry()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := notifier.Run(ctx, cfg, log, reg); err != nil {
		log.Error("notifier failed", "err", err)
		os.Exit(1)
	}
}
