package requester

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/event"
	resp "github.com/whalewatch/whalewatch/pkg/response"
)

// Modes of -response-mode.
const (
	ModeOff     = "off"
	ModeDryRun  = "dry-run"
	ModeEnforce = "enforce"
)

// Config is the response configuration.
type Config struct {
	PolicyFile string
	// Mode is off, dry-run or enforce; empty means dry-run when a policy
	// file is given, off otherwise.
	Mode string
	// MinInterval is the least time between two requests for one
	// container and action.
	MinInterval time.Duration
}

// RegisterFlags registers the response flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.PolicyFile, "response-policy", "", "response policy file (YAML) mapping threats to actions; empty: no responses")
	fs.StringVar(&c.Mode, "response-mode", "", "off, dry-run or enforce (empty: dry-run when a policy is given, off otherwise)")
	fs.DurationVar(&c.MinInterval, "response-min-interval", time.Minute, "least time between two response requests for the same container and action")
}

// Validate checks c (and that the policy file parses).
func (c *Config) Validate() error {
	switch c.Mode {
	case "", ModeOff:
	case ModeDryRun, ModeEnforce:
		if c.PolicyFile == "" {
			return fmt.Errorf("response-mode %s needs response-policy", c.Mode)
		}
	default:
		return fmt.Errorf("response-mode %q: want off, dry-run or enforce", c.Mode)
	}
	if c.MinInterval < 0 {
		return errors.New("response-min-interval must not be negative")
	}
	if c.EffectiveMode() != ModeOff {
		if _, err := LoadPolicy(c.PolicyFile); err != nil {
			return err
		}
	}
	return nil
}

// EffectiveMode resolves the empty mode.
func (c *Config) EffectiveMode() string {
	switch {
	case c.Mode != "":
		return c.Mode
	case c.PolicyFile != "":
		return ModeDryRun
	}
	return ModeOff
}

// Publisher publishes an event on a subject.
type Publisher interface {
	Publish(ctx context.Context, subj string, e *event.Event) error
}

// Responder turns threats into response requests by its policy.
type Responder struct {
	policy      *Policy
	dryRun      bool
	minInterval time.Duration
	pub         Publisher
	now         func() time.Time
	requests    *prometheus.CounterVec

	mu   sync.Mutex
	last map[string]time.Time // container id + action → last request
}

// New returns a responder, or nil when responses are off (a nil Responder
// does nothing).
func New(cfg Config, pub Publisher, reg prometheus.Registerer) (*Responder, error) {
	mode := cfg.EffectiveMode()
	if mode == ModeOff {
		return nil, nil
	}
	p, err := LoadPolicy(cfg.PolicyFile)
	if err != nil {
		return nil, err
	}
	r := &Responder{
		policy: p, dryRun: mode != ModeEnforce, minInterval: cfg.MinInterval, pub: pub, now: time.Now,
		last: map[string]time.Time{},
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whalewatch_detector_response_requests_total",
			Help: "Response requests, by action and outcome (published, dry_run, rate_limited, error).",
		}, []string{"action", "outcome"}),
	}
	reg.MustRegister(r.requests)
	return r, nil
}

// Respond publishes the request the policy gives for threat t, if any and
// unless one for the same container and action was published within the
// minimum interval. It returns the request (nil when none was published).
func (r *Responder) Respond(ctx context.Context, t *event.Event) (*event.Event, error) {
	if r == nil || t.Container == nil || t.Container.ID == "" {
		return nil, nil
	}
	rule := r.policy.Decide(t)
	if rule == nil {
		return nil, nil
	}
	dry := r.dryRun || rule.DryRun
	if !r.admit(t.Container.ID + "\x00" + string(rule.Action)) {
		r.requests.WithLabelValues(string(rule.Action), "rate_limited").Inc()
		return nil, nil
	}
	reason := fmt.Sprintf("policy rule %q", rule.Name)
	if t.Rule != nil {
		reason = fmt.Sprintf("threat %s (%s), policy rule %q", t.Rule.ID, t.Whalewatch.Severity, rule.Name)
	}
	req, err := resp.NewRequest(resp.Request{
		Host: t.Host.Name, ContainerID: t.Container.ID, Action: rule.Action, CPUs: rule.CPUs,
		DryRun: dry, Reason: reason, Trigger: t.Event.ID, Container: t.Container, Time: r.now(),
	})
	if err != nil {
		r.requests.WithLabelValues(string(rule.Action), "error").Inc()
		return nil, err
	}
	if err := r.pub.Publish(ctx, resp.RequestSubject(req), req); err != nil {
		r.forget(t.Container.ID + "\x00" + string(rule.Action))
		r.requests.WithLabelValues(string(rule.Action), "error").Inc()
		return nil, err
	}
	outcome := "published"
	if dry {
		outcome = "dry_run"
	}
	r.requests.WithLabelValues(string(rule.Action), outcome).Inc()
	return req, nil
}

// admit records a request for key unless one was made within minInterval.
// Entries older than the interval are swept once the map grows, so memory
// is bounded by the requests of one interval.
func (r *Responder) admit(key string) bool {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if at, ok := r.last[key]; ok && now.Sub(at) < r.minInterval {
		return false
	}
	if len(r.last) >= 10000 {
		for k, at := range r.last {
			if now.Sub(at) >= r.minInterval {
				delete(r.last, k)
			}
		}
	}
	r.last[key] = now
	return true
}

func (r *Responder) forget(key string) {
	r.mu.Lock()
	delete(r.last, key)
	r.mu.Unlock()
}
