// Package route decides which destinations a threat goes to, from a YAML
// file (NOTIFY_ROUTES):
//
//	destinations:            # optional: the least severe threat each one gets
//	  slack-webhook: {min_severity: high}
//	routes:                  # every route that matches adds its destinations
//	  - match:
//	      severity: [critical]           # any of these
//	      tags: [attack.t1095]           # at least one of the threat's tags
//	      images: ["shop/*", "nginx:*"]  # glob (path.Match) on image name[:tag]
//	      labels: {team: payments}       # every label, value a glob
//	    to: [slack-api, json-webhook]
//	default: [console, slack-webhook]    # when no route matches (default: all)
//
// Every error names the file and line.
package route

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// Table is a parsed routes file.
type Table struct {
	routes   []rule
	dflt     []string
	minSev   map[string]event.Severity
	outputs  []string
	explicit bool // a default list was given
}

type rule struct {
	severities []event.Severity
	tags       []string
	images     []string
	labels     map[string]string
	to         []string
}

type fileFormat struct {
	Destinations map[string]struct {
		MinSeverity string `yaml:"min_severity"`
	} `yaml:"destinations"`
	Routes  []routeFormat `yaml:"routes"`
	Default []string      `yaml:"default"`
}

type routeFormat struct {
	Match struct {
		Severity []string          `yaml:"severity"`
		Tags     []string          `yaml:"tags"`
		Images   []string          `yaml:"images"`
		Labels   map[string]string `yaml:"labels"`
	} `yaml:"match"`
	To []string `yaml:"to"`
}

// All sends every threat to every destination: the table without a file.
func All(outputs []string) *Table {
	return &Table{outputs: slices.Clone(outputs), minSev: map[string]event.Severity{}}
}

// Load reads the routes file at file; outputs are the destinations that are
// configured.
func Load(file string, outputs []string) (*Table, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading routes: %w", err)
	}
	return Parse(file, b, outputs)
}

// Parse parses a routes file's content; name is used in errors.
func Parse(name string, b []byte, outputs []string) (*Table, error) {
	t := All(outputs)
	at := func(line int, format string, args ...any) error {
		return fmt.Errorf("%s:%d: %s", name, line, fmt.Sprintf(format, args...))
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err) // yaml's message has "line N"
	}
	if len(doc.Content) == 0 {
		return t, nil
	}
	var f fileFormat
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) && len(te.Errors) > 0 {
			// "line 4: field image not found in type struct {...}"
			if m := unknownField.FindStringSubmatch(te.Errors[0]); m != nil {
				return nil, fmt.Errorf("%s:%s: unknown field %q", name, m[1], m[2])
			}
			return nil, fmt.Errorf("%s: %s", name, te.Errors[0])
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	lines := keyLines(doc.Content[0])
	routeLines := seqLines(doc.Content[0], "routes")
	known := func(line int, d string) error {
		if !slices.Contains(outputs, d) {
			return at(line, "destination %q is not configured (configured: %s)", d, strings.Join(outputs, ", "))
		}
		return nil
	}
	for d, v := range f.Destinations {
		line := lines["destinations."+d]
		if err := known(line, d); err != nil {
			return nil, err
		}
		if v.MinSeverity != "" {
			sev, err := event.ParseSeverity(v.MinSeverity)
			if err != nil {
				return nil, at(line, "destination %s: %v", d, err)
			}
			t.minSev[d] = sev
		}
	}
	for i, r := range f.Routes {
		n := struct{ Line int }{routeLines[i]}
		var ru rule
		if len(r.To) == 0 {
			return nil, at(n.Line, "route has no destinations (to:)")
		}
		for _, d := range r.To {
			if err := known(n.Line, d); err != nil {
				return nil, err
			}
		}
		ru.to = r.To
		for _, s := range r.Match.Severity {
			sev, err := event.ParseSeverity(s)
			if err != nil {
				return nil, at(n.Line, "%v", err)
			}
			ru.severities = append(ru.severities, sev)
		}
		for _, g := range r.Match.Images {
			if _, err := path.Match(g, ""); err != nil {
				return nil, at(n.Line, "image pattern %q: %v", g, err)
			}
		}
		for k, g := range r.Match.Labels {
			if _, err := path.Match(g, ""); err != nil {
				return nil, at(n.Line, "label %s pattern %q: %v", k, g, err)
			}
		}
		ru.tags, ru.images, ru.labels = r.Match.Tags, r.Match.Images, r.Match.Labels
		if len(ru.severities)+len(ru.tags)+len(ru.images)+len(ru.labels) == 0 {
			return nil, at(n.Line, "route matches everything (empty match:); list its destinations under default: instead")
		}
		t.routes = append(t.routes, ru)
	}
	if f.Default != nil {
		for _, d := range f.Default {
			if err := known(lines["default"], d); err != nil {
				return nil, err
			}
		}
		t.dflt, t.explicit = f.Default, true
	}
	return t, nil
}

var unknownField = regexp.MustCompile(`^line (\d+): field (\S+) not found`)

// seqLines returns the line of each item of the sequence under key.
func seqLines(n *yaml.Node, key string) []int {
	if n.Kind != yaml.MappingNode {
		return nil
	}
	var out []int
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			for _, item := range n.Content[i+1].Content {
				out = append(out, item.Line)
			}
		}
	}
	return out
}

// keyLines maps "key" and "key.sub" of a mapping node to their lines.
func keyLines(n *yaml.Node) map[string]int {
	out := map[string]int{}
	if n.Kind != yaml.MappingNode {
		return out
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		out[k.Value] = k.Line
		if v.Kind == yaml.MappingNode {
			for j := 0; j+1 < len(v.Content); j += 2 {
				out[k.Value+"."+v.Content[j].Value] = v.Content[j].Line
			}
		}
	}
	return out
}

// Wants reports whether threat e goes to destination out.
func (t *Table) Wants(out string, e *event.Event) bool {
	if min, ok := t.minSev[out]; ok && e.Whalewatch.Severity.Score() < min.Score() {
		return false
	}
	matched := false
	for _, r := range t.routes {
		if r.matches(e) {
			matched = true
			if slices.Contains(r.to, out) {
				return true
			}
		}
	}
	if matched {
		return false
	}
	if t.explicit {
		return slices.Contains(t.dflt, out)
	}
	return true
}

// MinSeverity is the least severe threat destination out can get (low when
// the file does not say), so that its consumers filter on the server.
func (t *Table) MinSeverity(out string) event.Severity {
	if s, ok := t.minSev[out]; ok {
		return s
	}
	return event.SeverityLow
}

func (r rule) matches(e *event.Event) bool {
	if len(r.severities) > 0 && !slices.Contains(r.severities, e.Whalewatch.Severity) {
		return false
	}
	if len(r.tags) > 0 && !slices.ContainsFunc(r.tags, func(tag string) bool { return slices.Contains(e.Tags, tag) }) {
		return false
	}
	var c event.Container
	if e.Container != nil {
		c = *e.Container
	}
	if len(r.images) > 0 {
		image := c.Image.Name
		if len(c.Image.Tag) > 0 && !strings.Contains(image, ":") {
			image += ":" + c.Image.Tag[0]
		}
		if !slices.ContainsFunc(r.images, func(g string) bool { ok, _ := path.Match(g, image); return ok }) {
			return false
		}
	}
	for k, g := range r.labels {
		v, ok := c.Labels[k]
		if !ok {
			return false
		}
		if m, _ := path.Match(g, v); !m {
			return false
		}
	}
	return true
}
