package rules

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/services/detector/internal/state"
	shipped "github.com/whalewatch/whalewatch/services/detector/ruleset"
)

// Config is where rules come from.
type Config struct {
	// Dir holds the user's rule files (*.yaml, *.yml), applied after the
	// shipped ones in name order; "" for the shipped rules only.
	Dir string
	// ReloadInterval is how often Dir is checked for changes; 0 disables reloading.
	ReloadInterval time.Duration
	// TrustedRegistries replaces the list trusted_registries when set.
	TrustedRegistries string
	// Disable lists rule ids and tag:<tag> to turn off.
	Disable string
}

// RegisterFlags registers the rule flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Dir, "rules-dir", "", "directory of user rule files (*.yaml) that add, override or disable rules; applied after the shipped rules and reloaded on change")
	fs.DurationVar(&c.ReloadInterval, "rules-reload-interval", 5*time.Second, "how often rules-dir is checked for changes (0: never reload)")
	fs.StringVar(&c.TrustedRegistries, "rules-trusted-registries", "", "comma-separated registries whose images are trusted (replaces the rules' trusted_registries list; empty keeps it)")
	fs.StringVar(&c.Disable, "rules-disable", "", "comma-separated rule ids, or tag:<tag>, to turn off")
}

// Validate checks c, and loads the rules it names so that a broken rule
// file stops the detector at start with file, line and reason.
func (c *Config) Validate() error {
	if c.ReloadInterval < 0 {
		return errors.New("rules-reload-interval must not be negative")
	}
	if _, err := LoadConfig(*c); err != nil {
		return fmt.Errorf("rules rejected:\n%w", err)
	}
	return nil
}

// Options returns the set options c asks for.
func (c *Config) Options() Options {
	return Options{TrustedRegistries: splitList(c.TrustedRegistries), Disable: splitList(c.Disable)}
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// Shipped returns the rule files built into the binary, in apply order.
func Shipped() ([]Source, error) { return ReadDir(shipped.FS, ".", "builtin") }

// ReadDir reads the rule files (*.yaml, *.yml) of dir in fsys, sorted by
// name; prefix names them in messages.
func ReadDir(fsys fs.FS, dir, prefix string) ([]Source, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("reading rules: %w", err)
	}
	var out []Source
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || strings.HasPrefix(name, ".") || !(strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml")) {
			continue
		}
		data, err := fs.ReadFile(fsys, filepath.ToSlash(filepath.Join(dir, name)))
		if err != nil {
			return nil, fmt.Errorf("reading rules: %w", err)
		}
		out = append(out, Source{Name: filepath.Join(prefix, name), Data: data})
	}
	return out, nil
}

// LoadConfig loads the shipped rules and the user's, as c says.
func LoadConfig(c Config) (*Set, error) {
	srcs, err := Shipped()
	if err != nil {
		return nil, err
	}
	if c.Dir != "" {
		user, err := ReadDir(os.DirFS(c.Dir), ".", c.Dir)
		if err != nil {
			return nil, err
		}
		srcs = append(srcs, user...)
	}
	return Load(srcs, c.Options())
}

// Engine evaluates the current rule set and swaps in a new one when the
// rule files change. A swap is atomic: an evaluation runs wholly on the old
// or wholly on the new set, and the detection state (kept by the state
// tracker, not here) is untouched.
type Engine struct {
	cfg     Config
	log     *slog.Logger
	cur     atomic.Pointer[Set]
	stamp   string
	reloads *prometheus.CounterVec
	loaded  prometheus.Gauge
	errs    *prometheus.CounterVec
}

// NewEngine loads the rules c names. When they are rejected it returns the
// error with an engine running the shipped rules alone (Config.Validate
// has normally caught the error before).
func NewEngine(c Config, log *slog.Logger, reg prometheus.Registerer) (*Engine, error) {
	e := &Engine{
		cfg: c,
		log: log,
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whalewatch_detector_rules_reloads_total",
			Help: "Rule reloads after a change of the rule files, by result (success, failure).",
		}, []string{"result"}),
		loaded: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "whalewatch_detector_rules_enabled",
			Help: "Rules enabled in the running rule set.",
		}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whalewatch_detector_rule_errors_total",
			Help: "Condition evaluations that failed at run time, by rule (a bug in the rule).",
		}, []string{"rule"}),
	}
	reg.MustRegister(e.reloads, e.loaded, e.errs)
	e.stamp, _ = dirStamp(c.Dir)
	s, err := LoadConfig(c)
	if err != nil {
		shippedOnly, serr := LoadConfig(Config{})
		if serr != nil {
			return nil, errors.Join(err, serr) // the shipped rules are tested: cannot happen
		}
		e.swap(shippedOnly)
		return e, err
	}
	e.swap(s)
	return e, nil
}

func (e *Engine) swap(s *Set) {
	s.OnError = func(r *Rule, err error) {
		e.errs.WithLabelValues(r.ID).Inc()
		e.log.Debug("rule failed", "rule", r.ID, "err", err)
	}
	e.cur.Store(s)
	e.loaded.Set(float64(s.Enabled()))
}

// Set is the running rule set.
func (e *Engine) Set() *Set { return e.cur.Load() }

// Evaluate runs the current rule set on ev with the state snapshot st.
func (e *Engine) Evaluate(ev *event.Event, st *state.Snapshot) []Match {
	return e.cur.Load().Evaluate(ev, st)
}

// Run reloads the rules when the files of the rules directory change, until
// ctx ends. A set with errors is logged and counted, and the running set
// stays.
func (e *Engine) Run(ctx context.Context) error {
	if e.cfg.Dir == "" || e.cfg.ReloadInterval == 0 {
		<-ctx.Done()
		return nil
	}
	t := time.NewTicker(e.cfg.ReloadInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			e.ReloadIfChanged()
		}
	}
}

// ReloadIfChanged reloads the rules when the directory's files changed since
// the last look, and reports whether it swapped in a new set.
func (e *Engine) ReloadIfChanged() bool {
	stamp, err := dirStamp(e.cfg.Dir)
	if err != nil {
		e.log.Warn("reading rules directory", "dir", e.cfg.Dir, "err", err)
		return false
	}
	if stamp == e.stamp {
		return false
	}
	e.stamp = stamp // a broken file is reported once, not every tick
	s, err := LoadConfig(e.cfg)
	if err != nil {
		e.reloads.WithLabelValues("failure").Inc()
		e.log.Error("rules rejected, the running rules stay", "err", err)
		return false
	}
	e.swap(s)
	e.reloads.WithLabelValues("success").Inc()
	e.log.Info("rules reloaded", "enabled", s.Enabled())
	return true
}

// dirStamp identifies the state of the rule files of dir: their names,
// sizes and modification times. Stat follows symlinks, so a Kubernetes
// ConfigMap update (an atomic symlink swap) changes it.
func dirStamp(dir string) (string, error) {
	if dir == "" {
		return "", nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	names := make([]string, 0, len(entries))
	for _, en := range entries {
		names = append(names, en.Name())
	}
	slices.Sort(names)
	for _, n := range names {
		if !(strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml")) || strings.HasPrefix(n, ".") {
			continue
		}
		fi, err := os.Stat(filepath.Join(dir, n))
		if err != nil {
			continue
		}
		fmt.Fprintf(&b, "%s\x00%d\x00%d\n", n, fi.Size(), fi.ModTime().UnixNano())
	}
	return b.String(), nil
}
