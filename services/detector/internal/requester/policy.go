// Package requester decides which response actions the detector asks for when
// it raises a threat and publishes the requests: the requester half of
// responses, the collector being the executor (see pkg/response for the
// request contract; the collector of the container's host carries them out).
//
// A Policy is an ordered list of rules; the first rule whose match fits the
// threat gives the action. Responses are off unless a policy file is given,
// and dry-run unless -response-mode=enforce: a dry-run request makes the
// collector report what it would have done, and nothing else.
package requester

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path"
	"slices"

	"go.yaml.in/yaml/v3"

	"github.com/whalewatch/whalewatch/pkg/event"
	resp "github.com/whalewatch/whalewatch/pkg/response"
	"github.com/whalewatch/whalewatch/services/detector/internal/state"
)

// Policy maps threats to response actions.
type Policy struct {
	Rules []Rule `yaml:"rules"`
}

// Rule is one policy entry. Every field of Match that is set must fit.
type Rule struct {
	Name   string      `yaml:"name"`
	Match  Match       `yaml:"match"`
	Action resp.Action `yaml:"action"` // pause, stop, kill, disconnect, limit_cpu
	CPUs   float64     `yaml:"cpus"`   // limit_cpu only
	// DryRun keeps this rule dry-run even when the mode is enforce.
	DryRun bool `yaml:"dry_run"`
}

// Match selects threats. Rule ids and images are glob patterns (path.Match:
// *, ?, [...]); a threat fits Tags when it carries at least one of them.
type Match struct {
	Rules       []string       `yaml:"rules"`
	MinSeverity event.Severity `yaml:"min_severity"`
	Tags        []string       `yaml:"tags"`
	Images      []string       `yaml:"images"`
}

// LoadPolicy reads and checks a policy file. Unknown fields are errors, so
// a typo cannot silently widen or narrow a rule.
func LoadPolicy(file string) (*Policy, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading response policy: %w", err)
	}
	p, err := ParsePolicy(data)
	if err != nil {
		return nil, fmt.Errorf("response policy %s: %w", file, err)
	}
	return p, nil
}

// ParsePolicy parses and checks a policy document.
func ParsePolicy(data []byte) (*Policy, error) {
	var p Policy
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("parsing: %w", err)
	}
	var errs []error
	for i, r := range p.Rules {
		where := fmt.Sprintf("rule %d (%s)", i+1, r.Name)
		if r.Action == resp.Unpause || !resp.ValidAction(r.Action) {
			errs = append(errs, fmt.Errorf("%s: action %q: want one of pause, stop, kill, disconnect, limit_cpu", where, r.Action))
		}
		if r.Action == resp.LimitCPU && (r.CPUs < resp.MinCPUs || r.CPUs > resp.MaxCPUs) {
			errs = append(errs, fmt.Errorf("%s: limit_cpu needs cpus between %g and %g", where, resp.MinCPUs, resp.MaxCPUs))
		}
		if r.Action != resp.LimitCPU && r.CPUs != 0 {
			errs = append(errs, fmt.Errorf("%s: cpus is only for limit_cpu", where))
		}
		if r.Match.MinSeverity != "" && !r.Match.MinSeverity.Valid() {
			errs = append(errs, fmt.Errorf("%s: min_severity %q: want low, medium, high or critical", where, r.Match.MinSeverity))
		}
		for _, g := range slices.Concat(r.Match.Rules, r.Match.Images) {
			if _, err := path.Match(g, ""); err != nil {
				errs = append(errs, fmt.Errorf("%s: bad pattern %q: %w", where, g, err))
			}
		}
		if len(r.Match.Rules)+len(r.Match.Tags)+len(r.Match.Images) == 0 && r.Match.MinSeverity == "" {
			errs = append(errs, fmt.Errorf("%s: match is empty; say min_severity: low to match every threat", where))
		}
	}
	if len(p.Rules) == 0 {
		errs = append(errs, errors.New("no rules"))
	}
	return &p, errors.Join(errs...)
}

// Decide returns the first rule that threat t fits, or nil.
func (p *Policy) Decide(t *event.Event) *Rule {
	for i := range p.Rules {
		if p.Rules[i].Match.fits(t) {
			return &p.Rules[i]
		}
	}
	return nil
}

func (m *Match) fits(t *event.Event) bool {
	if m.MinSeverity != "" && t.Whalewatch.Severity.Score() < m.MinSeverity.Score() {
		return false
	}
	if len(m.Rules) > 0 {
		id := ""
		if t.Rule != nil {
			id = t.Rule.ID
		}
		if !globAny(m.Rules, id) {
			return false
		}
	}
	if len(m.Images) > 0 && !globAny(m.Images, state.ImageKey(t.Container)) {
		return false
	}
	if len(m.Tags) > 0 && !slices.ContainsFunc(m.Tags, func(tag string) bool { return slices.Contains(t.Tags, tag) }) {
		return false
	}
	return true
}

func globAny(patterns []string, s string) bool {
	for _, g := range patterns {
		if ok, _ := path.Match(g, s); ok {
			return true
		}
	}
	return false
}
