package rules

import (
	"errors"
	"fmt"
	"net/netip"
	"path"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/builtin"
	"github.com/expr-lang/expr/file"
	"github.com/expr-lang/expr/parser"
	"github.com/expr-lang/expr/vm"
	"go.yaml.in/yaml/v3"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// Rule is a detection rule and the ATT&CK context of what it finds.
type Rule struct {
	ID          string
	Name        string
	Description string
	Severity    event.Severity
	TacticID    string
	Tactic      string
	TechniqueID string
	Technique   string
	Kinds       []event.Telemetry
	Condition   string
	Output      string
	Tags        []string
	Exceptions  []Exception
	Enabled     bool
	Source      string // file:line where the rule was defined
}

// Match is one rule that an event triggered, with the message to show.
type Match struct {
	Rule    *Rule
	Message string
}

// Source is one rule file's name (for messages) and content.
type Source struct {
	Name string
	Data []byte
}

// Options adjust a rule set after its files are merged.
type Options struct {
	// TrustedRegistries, when not empty, replaces the list trusted_registries.
	TrustedRegistries []string
	// Disable turns off rules by id, or by tag as "tag:<tag>".
	Disable []string
}

var (
	idPattern        = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,127}$`)
	namePattern      = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,63}$`)
	tacticPattern    = regexp.MustCompile(`^TA[0-9]{4}$`)
	techniquePattern = regexp.MustCompile(`^T[0-9]{4}(\.[0-9]{3})?$`)
)

type namedList struct {
	items []string
	file  string
	line  int
}

type namedMacro struct {
	src  string
	file string
	node yaml.Node
}

type ruleDef struct {
	rule      Rule
	file      string
	condition yaml.Node
	output    yaml.Node
}

// Load parses sources in order, merges them (later files add, override and
// disable rules of earlier ones) and compiles every enabled rule. Any error
// rejects the whole set; the error names file, line and reason of each
// problem found.
func Load(sources []Source, opts Options) (*Set, error) {
	lists := map[string]*namedList{}
	macros := map[string]*namedMacro{}
	var defs []*ruleDef
	byID := map[string]*ruleDef{}
	var errs []error

	for _, src := range sources {
		f, err := parseFile(src.Name, src.Data)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, name := range sortedKeys(f.Lists) {
			n := f.Lists[name]
			if err := checkName(src.Name, &n, "list", name); err != nil {
				errs = append(errs, err)
				continue
			}
			ls, err := decodeList(src.Name, name, &n)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			prev := lists[name]
			switch {
			case ls.Append && prev == nil:
				errs = append(errs, errAt(src.Name, &n, "list %q: append to a list that is not defined", name))
			case ls.Append:
				prev.items = append(slices.Clone(prev.items), ls.Items...)
			default:
				lists[name] = &namedList{items: ls.Items, file: src.Name, line: n.Line}
			}
		}
		for _, name := range sortedKeys(f.Macros) {
			n := f.Macros[name]
			if err := checkName(src.Name, &n, "macro", name); err != nil {
				errs = append(errs, err)
				continue
			}
			if n.Kind != yaml.ScalarNode || strings.TrimSpace(n.Value) == "" {
				errs = append(errs, errAt(src.Name, &n, "macro %q: want an expression", name))
				continue
			}
			macros[name] = &namedMacro{src: n.Value, file: src.Name, node: n}
		}
		for i := range f.Rules {
			rs := &f.Rules[i]
			if err := mergeRule(src.Name, rs, &defs, byID); err != nil {
				errs = append(errs, err)
			}
		}
		for _, n := range f.Disable {
			d, ok := byID[n.Value]
			if !ok {
				errs = append(errs, errAt(src.Name, &n, "disable: no rule %q", n.Value))
				continue
			}
			d.rule.Enabled = false
		}
	}
	for name := range lists {
		if _, clash := macros[name]; clash {
			errs = append(errs, fmt.Errorf("%s:%d: %q is both a list and a macro", lists[name].file, lists[name].line, name))
		}
	}
	if len(opts.TrustedRegistries) > 0 {
		lists["trusted_registries"] = &namedList{items: opts.TrustedRegistries, file: "flag rules-trusted-registries"}
	}
	for _, d := range opts.Disable {
		tag, isTag := strings.CutPrefix(d, "tag:")
		found := false
		for _, def := range defs {
			if (isTag && slices.Contains(def.rule.Tags, tag)) || (!isTag && def.rule.ID == d) {
				def.rule.Enabled = false
				found = true
			}
		}
		if !found {
			errs = append(errs, fmt.Errorf("flag rules-disable: no rule %s %q", map[bool]string{true: "tagged", false: "with id"}[isTag], strings.TrimPrefix(d, "tag:")))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	c := &compiler{lists: lists, macros: macros, lines: map[string][]string{}}
	for _, src := range sources {
		c.lines[src.Name] = strings.Split(string(src.Data), "\n")
	}
	for name, m := range macros {
		if _, err := c.compile(m.src, false); err != nil {
			errs = append(errs, c.exprError(m.file, &m.node, fmt.Sprintf("macro %q", name), err))
		}
	}
	set := &Set{lists: map[string][]string{}}
	for name, l := range lists {
		set.lists[name] = l.items
	}
	for _, d := range defs {
		set.all = append(set.all, &d.rule)
		if !d.rule.Enabled {
			continue
		}
		cr, err := c.rule(d)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		set.add(cr)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	set.initPool()
	return set, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// reserved are names a list or macro may not take: they would shadow the
// event's fields or a function.
func reserved(name string) bool {
	t := reflect.TypeOf(Env{})
	for i := 0; i < t.NumField(); i++ {
		if t.Field(i).Tag.Get("expr") == name {
			return true
		}
	}
	for _, f := range functions {
		if f.name == name {
			return true
		}
	}
	if _, ok := builtin.Index[name]; ok {
		return true
	}
	switch name {
	case "true", "false", "nil", "in", "not", "and", "or", "matches", "contains", "startsWith", "endsWith", "let", "if", "else":
		return true
	}
	return false
}

func checkName(file string, n *yaml.Node, what, name string) error {
	if !namePattern.MatchString(name) {
		return errAt(file, n, "%s name %q: want lower-case letters, digits and _", what, name)
	}
	if reserved(name) {
		return errAt(file, n, "%s name %q is reserved (an event field, function or keyword)", what, name)
	}
	return nil
}

func mergeRule(file string, rs *ruleSpec, defs *[]*ruleDef, byID map[string]*ruleDef) error {
	at := func(format string, args ...any) error {
		return &FileError{File: file, Line: rs.Line, Reason: fmt.Sprintf("rule %q: ", rs.ID) + fmt.Sprintf(format, args...)}
	}
	if !idPattern.MatchString(rs.ID) {
		return at("id must be lower-case letters, digits and -")
	}
	prev, exists := byID[rs.ID]
	switch {
	case exists && !rs.Override:
		return at("already defined at %s (set override: true to change it)", prev.rule.Source)
	case !exists && rs.Override:
		return at("override of a rule that is not defined")
	}
	d := prev
	if !exists {
		d = &ruleDef{file: file, rule: Rule{ID: rs.ID, Enabled: true, Source: fmt.Sprintf("%s:%d", file, rs.Line)}}
	}
	r := &d.rule
	if rs.Enabled != nil {
		r.Enabled = *rs.Enabled
	}
	set := func(dst *string, v *string) {
		if v != nil {
			*dst = strings.TrimSpace(*v)
		}
	}
	set(&r.Name, rs.Name)
	set(&r.Description, rs.Description)
	if rs.Severity != nil {
		s, err := event.ParseSeverity(*rs.Severity)
		if err != nil {
			return at("severity %q: want low, medium, high or critical", *rs.Severity)
		}
		r.Severity = s
	}
	if m := rs.MITRE; m != nil {
		if !tacticPattern.MatchString(m.TacticID) || !techniquePattern.MatchString(m.TechniqueID) || m.Tactic == "" || m.Technique == "" {
			return at("mitre: want tactic_id (TA0000), tactic, technique_id (T0000 or T0000.000) and technique")
		}
		r.TacticID, r.Tactic, r.TechniqueID, r.Technique = m.TacticID, m.Tactic, m.TechniqueID, m.Technique
	}
	if rs.Kinds != nil {
		r.Kinds = nil
		for _, k := range rs.Kinds {
			t := event.Telemetry(k)
			if !t.Valid() {
				return at("kind %q: want one of %v", k, event.Telemetries)
			}
			r.Kinds = append(r.Kinds, t)
		}
	}
	if rs.Condition.Kind != 0 {
		d.condition, d.file = rs.Condition, file
		r.Condition = rs.Condition.Value
	}
	if rs.Output.Kind != 0 {
		d.output = rs.Output
		r.Output = strings.TrimSpace(rs.Output.Value)
	}
	if rs.Tags != nil {
		r.Tags = rs.Tags
	}
	for _, ex := range rs.Exceptions {
		for _, c := range ex.CIDRs {
			if _, err := netip.ParsePrefix(c); err != nil {
				return at("exception cidr %q: %v", c, err)
			}
		}
		for _, p := range slices.Concat(ex.Images, ex.Containers, ex.ProcessPaths, ex.ProcessNames) {
			if _, err := path.Match(p, ""); err != nil {
				return at("exception pattern %q: %v", p, err)
			}
		}
		for _, cl := range ex.CommandLines {
			if strings.TrimSpace(cl) == "" {
				return at("exception command line is empty")
			}
		}
		r.Exceptions = append(r.Exceptions, ex)
	}
	var missing []string
	for _, f := range []struct {
		name string
		ok   bool
	}{
		{"name", r.Name != ""}, {"description", r.Description != ""}, {"severity", r.Severity != ""},
		{"mitre", r.TechniqueID != ""}, {"kinds", len(r.Kinds) > 0}, {"condition", strings.TrimSpace(r.Condition) != ""},
		{"output", r.Output != ""},
	} {
		if !f.ok {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		return at("missing %s", strings.Join(missing, ", "))
	}
	if !exists {
		*defs = append(*defs, d)
		byID[rs.ID] = d
	}
	return nil
}

// compiler compiles conditions and output fields with the set's lists and
// macros expanded in place.
type compiler struct {
	lists  map[string]*namedList
	macros map[string]*namedMacro
	lines  map[string][]string // of each file, for error positions
}

func (c *compiler) compile(src string, asBool bool) (*vm.Program, error) {
	x := &expander{c: c}
	opts := []expr.Option{expr.Env(Env{}), expr.Patch(x), expr.Optimize(true)}
	if asBool {
		opts = append(opts, expr.AsBool())
	}
	opts = append(opts, exprFunctions()...)
	p, err := expr.Compile(src, opts...)
	if x.err != nil {
		return nil, x.err
	}
	return p, err
}

func (c *compiler) rule(d *ruleDef) (*compiled, error) {
	r := &d.rule
	prog, err := c.compile(r.Condition, true)
	if err != nil {
		return nil, c.exprError(d.file, &d.condition, fmt.Sprintf("rule %q: condition", r.ID), err)
	}
	out, err := c.template(r.Output)
	if err != nil {
		return nil, &FileError{File: d.file, Line: d.output.Line, Reason: fmt.Sprintf("rule %q: output: %v", r.ID, err)}
	}
	cr := &compiled{rule: r, cond: prog, output: out, tools: c.toolGate(r.Condition)}
	return cr, nil
}

// exprError places an expression error in the YAML file: the line and
// column of the offending token when the expression's text can be found in
// the file's lines, else the line of the expression.
func (c *compiler) exprError(fileName string, n *yaml.Node, what string, err error) error {
	fe := &FileError{File: fileName, Line: n.Line, Reason: what + ": " + err.Error()}
	var xe *file.Error
	if !errors.As(err, &xe) {
		return fe
	}
	fe.Reason = what + ": " + xe.Message
	if snippet := strings.TrimSpace(lineOf(n.Value, max(xe.Line, 1))); snippet != "" {
		fe.Reason += " (in `" + event.Truncate(snippet, 120) + "`)"
	}
	// Offset of the error in the expression, in runes.
	off := xe.Column
	for i, l := range strings.Split(n.Value, "\n") {
		if i+1 >= xe.Line {
			break
		}
		off += utf8.RuneCountInString(l) + 1
	}
	if line, col, ok := position(c.lines[fileName], n, off); ok {
		fe.Line, fe.Column = line, col
	}
	return fe
}

// position finds the rune offset off of scalar n's value in the file's
// lines. A block scalar (| or >) starts on the line after its indicator, a
// flow scalar at the node's column; each further line of the value is one
// line of the file without its indentation, joined by one character (a
// newline or, folded, a space). Quoted scalars with escapes come out
// approximate.
func position(lines []string, n *yaml.Node, off int) (line, col int, ok bool) {
	ln, start := n.Line, n.Column-1
	if n.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
		ln, start = n.Line+1, -1
	} else if n.Style&(yaml.SingleQuotedStyle|yaml.DoubleQuotedStyle) != 0 {
		start++
	}
	for ; ln >= 1 && ln <= len(lines); ln++ {
		raw := []rune(lines[ln-1])
		from := start
		if from < 0 {
			from = len(raw) - len([]rune(strings.TrimLeft(string(raw), " \t")))
		}
		start = -1
		if from > len(raw) {
			return 0, 0, false
		}
		width := len(raw) - from
		if off <= width {
			return ln, from + off + 1, true
		}
		off -= width + 1
	}
	return 0, 0, false
}

func lineOf(s string, n int) string {
	for i, l := range strings.Split(s, "\n") {
		if i+1 == n {
			return l
		}
	}
	return ""
}

// expander replaces list names by constants and macro names by their
// (recursively expanded) expressions. It runs as an expr patcher, before type
// checking, so a macro's fragment is type-checked where it is used.
type expander struct {
	c     *compiler
	stack []string
	err   error
}

func (x *expander) Visit(node *ast.Node) {
	switch n := (*node).(type) {
	case *ast.IdentifierNode:
		if l, ok := x.c.lists[n.Value]; ok {
			cn := &ast.ConstantNode{Value: l.items}
			if l.items == nil {
				cn.Value = []string{}
			}
			ast.Patch(node, cn)
			return
		}
		m, ok := x.c.macros[n.Value]
		if !ok {
			return
		}
		if slices.Contains(x.stack, n.Value) {
			if x.err == nil {
				x.err = fmt.Errorf("macro %q refers to itself (%s)", n.Value, strings.Join(append(x.stack, n.Value), " → "))
			}
			return
		}
		tree, err := parser.Parse(m.src)
		if err != nil {
			if x.err == nil {
				x.err = fmt.Errorf("macro %q: %w", n.Value, err)
			}
			return
		}
		inner := &expander{c: x.c, stack: append(slices.Clone(x.stack), n.Value)}
		ast.Walk(&tree.Node, inner)
		if inner.err != nil && x.err == nil {
			x.err = inner.err
		}
		ast.Patch(node, tree.Node)
	case *ast.BinaryNode:
		// `x in some_list`: a set lookup instead of a scan.
		if cn, ok := n.Right.(*ast.ConstantNode); ok && n.Operator == "in" {
			if items, ok := cn.Value.([]string); ok {
				m := make(map[string]struct{}, len(items))
				for _, s := range items {
					m[s] = struct{}{}
				}
				n.Right = &ast.ConstantNode{Value: m}
			}
		}
	}
}
