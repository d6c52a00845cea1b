// Package service is the one way every whalewatch binary starts: flags (and
// the environment, through flagenv), validation, a logger and a metrics
// registry, a context cancelled by SIGINT or SIGTERM, then the service's Run.
// Every binary also answers the same subcommands: version (and --version),
// healthcheck (its own /readyz, for container healthchecks in images without
// curl), and the ones its main declares.
package service

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
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

// Env is the process as a command sees it; tests give their own.
type Env struct {
	Stdout, Stderr io.Writer
	Getenv         func(string) string
}

// Command is a subcommand of a binary besides running the service, such as
// `detector rules lint`: the first argument names it, and Run gets the
// arguments after the name and returns the exit status.
type Command struct {
	Name  string
	Usage string // one line, shown by -h
	Run   func(ctx context.Context, args []string, env Env) int
}

// Sub is a command that starts like the service itself (flags, environment,
// validation, logger, exit statuses) with its own configuration, such as a
// one-shot setup job.
func Sub(name, usage string, cfg Config, logCfg *admin.LogConfig, run RunFunc) Command {
	return Command{Name: name, Usage: usage, Run: func(ctx context.Context, args []string, env Env) int {
		return runService(ctx, name, args, env, cfg, logCfg, run, nil)
	}}
}

// Main parses args into cfg and runs run; it exits with status 2 on a bad
// configuration or usage and 1 when run fails. logCfg is cfg's logging
// section; cmds are the binary's own subcommands.
func Main(name string, cfg Config, logCfg *admin.LogConfig, run RunFunc, cmds ...Command) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run1(ctx, name, os.Args[1:], Env{Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv}, cfg, logCfg, run, cmds...)
	stop()
	os.Exit(code)
}

// run1 is Main without the process: it returns the exit status.
func run1(ctx context.Context, name string, args []string, env Env, cfg Config, logCfg *admin.LogConfig, run RunFunc, cmds ...Command) int {
	builtin := []Command{
		{Name: "version", Usage: "print the build (module version, VCS revision and time, Go version) and exit", Run: func(_ context.Context, args []string, env Env) int {
			if len(args) > 0 {
				fmt.Fprintf(env.Stderr, "%s version: unexpected argument %q\n", name, args[0])
				return 2
			}
			ReadBuildInfo().write(env.Stdout, name)
			return 0
		}},
		{Name: "healthcheck", Usage: "exit 0 when this service's /readyz (at -http-addr) answers ready, else 1", Run: func(ctx context.Context, args []string, env Env) int {
			return healthcheck(ctx, name, args, env, cfg)
		}},
	}
	all := append(builtin, cmds...)
	for _, a := range args {
		if a == "--" || !strings.HasPrefix(args[0], "-") { // not a command's arguments
			break
		}
		if a == "-version" || a == "--version" {
			ReadBuildInfo().write(env.Stdout, name)
			return 0
		}
	}
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		for _, c := range all {
			if c.Name == args[0] {
				return c.Run(ctx, args[1:], env)
			}
		}
		fmt.Fprintf(env.Stderr, "%s: unknown command %q (commands: %s; flags start with -, see -h)\n", name, args[0], commandNames(all))
		return 2
	}
	return runService(ctx, name, args, env, cfg, logCfg, run, all)
}

// runService parses, validates and runs one configuration.
func runService(ctx context.Context, name string, args []string, env Env, cfg Config, logCfg *admin.LogConfig, run RunFunc, cmds []Command) int {
	fs := newFlagSet(name, env.Stderr, cfg, cmds)
	if err := flagenv.Parse(fs, args, env.Getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(env.Stderr, "%s: %v\n", name, err)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(env.Stderr, "%s: unexpected argument %q: a command goes first and flags after it (commands: %s)\n", name, fs.Arg(0), commandNames(cmds))
		return 2
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(env.Stderr, "%s: invalid configuration: %v\n", name, err)
		return 2
	}
	log := logCfg.NewLogger(env.Stderr, name)
	bi := ReadBuildInfo()
	reg := admin.NewRegistry()
	if err := bi.register(reg, name); err != nil {
		log.Error(name+" failed", "err", err)
		return 1
	}
	log.Info("starting", "version", bi.Version, "revision", bi.Revision, "go", bi.GoVersion)
	if err := run(ctx, log, reg); err != nil {
		log.Error(name+" failed", "err", err)
		return 1
	}
	return 0
}

// newFlagSet is cfg's flag set, whose -h lists the commands and every flag
// with its environment variable.
func newFlagSet(name string, stderr io.Writer, cfg Config, cmds []Command) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg.RegisterFlags(fs)
	fs.Usage = func() { writeUsage(stderr, name, fs, cmds) }
	return fs
}

// writeUsage is -h: usage line, commands, then each flag with its
// environment variable, default and description.
func writeUsage(w io.Writer, name string, fs *flag.FlagSet, cmds []Command) {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage:\n  %s [flags]\n", name)
	if len(cmds) > 0 {
		fmt.Fprintf(&b, "  %s <command> [arguments]\n\nCommands:\n", name)
		width := 0
		for _, c := range cmds {
			width = max(width, len(c.Name))
		}
		for _, c := range cmds {
			fmt.Fprintf(&b, "  %-*s  %s\n", width, c.Name, c.Usage)
		}
		fmt.Fprintf(&b, "  %-*s  same as version\n", width, "--version")
	}
	b.WriteString("\nFlags (each is also an environment variable; a flag given wins):\n")
	fs.VisitAll(func(f *flag.Flag) {
		typ, usage := flag.UnquoteUsage(f)
		fmt.Fprintf(&b, "  -%s", f.Name)
		if typ != "" {
			fmt.Fprintf(&b, " %s", typ)
		}
		fmt.Fprintf(&b, "  (%s)", flagenv.EnvName(f.Name))
		if f.DefValue != "" && !strings.HasPrefix(usage, "secret:") {
			fmt.Fprintf(&b, "  default %q", f.DefValue)
		}
		fmt.Fprintf(&b, "\n      %s\n", usage)
	})
	_, _ = io.WriteString(w, b.String())
}

func commandNames(cmds []Command) string {
	names := make([]string, 0, len(cmds))
	for _, c := range cmds {
		names = append(names, c.Name)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}
