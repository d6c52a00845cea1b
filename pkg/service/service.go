// Package service is the one way every whalewatch binary starts: flags (and
// the environment, through flagenv), validation, a logger and a metrics
// registry, a context cancelled by SIGINT or SIGTERM, then the service's Run.
package service

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/admin"
	"github.com/whalewatch/whalewatch/pkg/flagenv"
)

// Config is what Main needs of a service's configuration.
type Config interface {
	RegisterFlags(fs *flag.FlagSet)
	Validate() error
}

// RunFunc runs the service until ctx ends.
type RunFunc func(ctx context.Context, log *slog.Logger, reg *prometheus.Registry) error

// Main parses args into cfg and runs run; it exits with status 2 on a bad
// configuration and 1 when run fails. logCfg is cfg's logging section.
func Main(name string, cfg Config, logCfg *admin.LogConfig, run RunFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run1(ctx, name, os.Args[1:], os.Getenv, os.Stderr, cfg, logCfg, run)
	stop()
	os.Exit(code)
}

// run1 is Main without the process: it returns the exit status.
func run1(ctx context.Context, name string, args []string, getenv func(string) string, stderr io.Writer, cfg Config, logCfg *admin.LogConfig, run RunFunc) int {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg.RegisterFlags(fs)
	if err := flagenv.Parse(fs, args, getenv); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 2
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "%s: invalid configuration: %v\n", name, err)
		return 2
	}
	log := logCfg.NewLogger(stderr, name)
	if err := run(ctx, log, admin.NewRegistry()); err != nil {
		log.Error(name+" failed", "err", err)
		return 1
	}
	return 0
}
