package rules

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/expr-lang/expr/file"
	"github.com/expr-lang/expr/vm"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/services/detector/internal/state"
)

// Set is a compiled, immutable rule set. It is safe for concurrent use.
type Set struct {
	all    []*Rule // every rule, disabled ones too, in definition order
	byKind [8][]*compiled
	lists  map[string][]string
	pool   sync.Pool
	// OnError, when set before use, is told about a condition that failed at
	// run time (a bug in a rule); the rule counts as not matched.
	OnError func(r *Rule, err error)
}

type compiled struct {
	rule   *Rule
	cond   *vm.Program
	output []segment
	tools  map[string]struct{} // when set, the only process.tool values the rule can match (gate.go)
}

// runner is the per-goroutine scratch of Evaluate: the VM's stack is reused.
type runner struct {
	vm  vm.VM
	env Env
}

func kindIndex(t event.Telemetry) int {
	for i, k := range event.Telemetries {
		if k == t {
			return i
		}
	}
	return -1
}

func (s *Set) add(c *compiled) {
	for _, k := range c.rule.Kinds {
		if i := kindIndex(k); i >= 0 {
			s.byKind[i] = append(s.byKind[i], c)
		}
	}
}

func (s *Set) initPool() { s.pool.New = func() any { return new(runner) } }

// Rules returns every rule of the set, disabled ones included, in the order
// they were defined.
func (s *Set) Rules() []*Rule { return s.all }

// Rule returns the rule with id, or nil.
func (s *Set) Rule(id string) *Rule {
	for _, r := range s.all {
		if r.ID == id {
			return r
		}
	}
	return nil
}

// List returns the named list after all files were merged.
func (s *Set) List(name string) []string { return s.lists[name] }

// Enabled counts the enabled rules.
func (s *Set) Enabled() int {
	n := 0
	for _, r := range s.all {
		if r.Enabled {
			n++
		}
	}
	return n
}

// Evaluate returns the rules e triggers, given the state snapshot st (nil
// for none). Only the rules of e's telemetry kind run.
func (s *Set) Evaluate(e *event.Event, st *state.Snapshot) []Match {
	i := kindIndex(e.Whalewatch.Telemetry)
	if i < 0 || len(s.byKind[i]) == 0 {
		return nil
	}
	r := s.pool.Get().(*runner)
	defer s.pool.Put(r)
	newEnv(&r.env, e, st)
	// The VM reads fields through reflection, boxing each value it reads (a
	// few small allocations per event). Handing it the Env by value instead
	// saves those but copies 1.5 KB per event: more garbage, same speed.
	env := any(&r.env)
	var out []Match
	for _, c := range s.byKind[i] {
		if c.tools != nil {
			if _, ok := c.tools[r.env.Process.Tool]; !ok {
				continue
			}
		}
		v, err := r.vm.Run(c.cond, env)
		if err != nil {
			if s.OnError != nil {
				s.OnError(c.rule, err)
			}
			continue
		}
		if hit, _ := v.(bool); !hit || excepted(c.rule, &r.env) {
			continue
		}
		out = append(out, Match{Rule: c.rule, Message: render(c.output, &r.vm, env)})
	}
	return out
}

func excepted(r *Rule, env *Env) bool {
	for i := range r.Exceptions {
		if exceptionMatches(&r.Exceptions[i], env) {
			return true
		}
	}
	return false
}

func exceptionMatches(x *Exception, env *Env) bool {
	img := env.Container.Image
	if len(x.Images) > 0 && !globAnyOf(x.Images, img.Name) && !(img.Tag != "" && globAnyOf(x.Images, img.Name+":"+img.Tag)) {
		return false
	}
	if len(x.Containers) > 0 && !globAnyOf(x.Containers, env.Container.Name) {
		return false
	}
	for k, pattern := range x.Labels {
		v, ok := env.Container.Labels[k]
		if !ok || !glob(v, pattern) {
			return false
		}
	}
	if len(x.ProcessPaths) > 0 && !globAnyOf(x.ProcessPaths, env.Process.Path) {
		return false
	}
	if len(x.ProcessNames) > 0 && !globAnyOf(x.ProcessNames, env.Process.Tool) {
		return false
	}
	if len(x.CommandLines) > 0 && !slices.Contains(x.CommandLines, env.Process.CommandLine) {
		return false
	}
	if len(x.CIDRs) > 0 {
		ip, err := netip.ParseAddr(env.Destination.IP)
		if err != nil {
			return false
		}
		in := false
		for _, c := range x.CIDRs {
			if p, err := netip.ParsePrefix(c); err == nil && p.Contains(ip.Unmap()) {
				in = true
				break
			}
		}
		if !in {
			return false
		}
	}
	return true
}

func globAnyOf(patterns []string, s string) bool {
	if s == "" {
		return false
	}
	for _, p := range patterns {
		if glob(s, p) {
			return true
		}
	}
	return false
}

// Output templates: text with {{ expression }} fields. A field's value is
// attacker-controlled (a command line, a log line), so it is cut to
// maxField bytes and control characters become spaces; the whole message is
// cut to maxOutput.
const (
	maxField  = 256
	maxOutput = 1024
)

type segment struct {
	text string
	prog *vm.Program // nil for literal text
}

func (c *compiler) template(s string) ([]segment, error) {
	var segs []segment
	for s != "" {
		i := strings.Index(s, "{{")
		if i < 0 {
			if strings.Contains(s, "}}") {
				return nil, fmt.Errorf("unmatched }}")
			}
			segs = append(segs, segment{text: s})
			break
		}
		if i > 0 {
			if strings.Contains(s[:i], "}}") {
				return nil, fmt.Errorf("unmatched }}")
			}
			segs = append(segs, segment{text: s[:i]})
		}
		j := strings.Index(s[i:], "}}")
		if j < 0 {
			return nil, fmt.Errorf("unclosed {{")
		}
		src := strings.TrimSpace(s[i+2 : i+j])
		if src == "" {
			return nil, fmt.Errorf("empty {{ }}")
		}
		// {{.container.name}} (Go template style) means the same as {{container.name}}.
		src = strings.TrimPrefix(src, ".")
		p, err := c.compile(src, false)
		if err != nil {
			var xe *file.Error
			if errors.As(err, &xe) {
				err = errors.New(xe.Message)
			}
			return nil, fmt.Errorf("{{ %s }}: %w", src, err)
		}
		segs = append(segs, segment{text: src, prog: p})
		s = s[i+j+2:]
	}
	return segs, nil
}

func render(segs []segment, m *vm.VM, env any) string {
	var b strings.Builder
	for _, s := range segs {
		if s.prog == nil {
			b.WriteString(s.text)
			continue
		}
		v, err := m.Run(s.prog, env)
		if err != nil {
			b.WriteString("?")
			continue
		}
		b.WriteString(sanitize(formatValue(v)))
	}
	return event.Truncate(b.String(), maxOutput)
}

func formatValue(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case []string:
		return strings.Join(x, " ")
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	}
	return fmt.Sprint(v)
}

func sanitize(s string) string {
	s = event.Truncate(s, maxField)
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == '\u2028' || r == '\u2029' {
			return ' '
		}
		return r
	}, s)
}
