// Package coverage joins the shipped detection rules with two references a
// security team compares a detector against, and renders the result for
// docs/DETECTION.md: every rule of Falco's default rule sets
// (falcosecurity/rules) with the whalewatch rules that cover it or the reason
// it does not apply, and the techniques of MITRE ATT&CK's Containers matrix
// with the rules that detect them.
//
// The references live in falco.yaml beside this file. The join is checked
// (every stable Falco rule covered or explained, every named rule shipped
// and enabled) so the table cannot silently go stale.
package coverage

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/whalewatch/whalewatch/services/detector/internal/rules"
)

//go:embed falco.yaml
var falcoYAML []byte

// Maturity levels of falcosecurity/rules, in the order the table shows them.
var maturities = []string{"stable", "incubating", "sandbox"}

// Reference is the content of falco.yaml.
type Reference struct {
	Source struct {
		Repository string            `yaml:"repository"`
		Commit     string            `yaml:"commit"`
		Files      map[string]string `yaml:"files"`
	} `yaml:"source"`
	Falco     []FalcoRule `yaml:"falco"`
	Container []Technique `yaml:"attack_containers"`
}

// FalcoRule is one rule of falcosecurity/rules and what whalewatch does about
// it: exactly one of CoveredBy, NotApplicable and Gap is set.
type FalcoRule struct {
	Rule          string   `yaml:"rule"`
	Maturity      string   `yaml:"maturity"`
	CoveredBy     []string `yaml:"covered_by"`
	NotApplicable string   `yaml:"not_applicable"`
	Gap           string   `yaml:"gap"`
	Note          string   `yaml:"note"`
}

// Technique is one technique of the ATT&CK Containers matrix.
type Technique struct {
	ID      string   `yaml:"id"`
	Name    string   `yaml:"name"`
	Tactics []string `yaml:"tactics"`
}

// Load reads the embedded reference.
func Load() (*Reference, error) { return Parse(falcoYAML) }

// Parse decodes a reference strictly and checks its own consistency.
func Parse(data []byte) (*Reference, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var ref Reference
	if err := dec.Decode(&ref); err != nil {
		return nil, fmt.Errorf("falco coverage reference: %w", err)
	}
	var errs []error
	seen := map[string]bool{}
	for _, f := range ref.Falco {
		if seen[f.Rule] {
			errs = append(errs, fmt.Errorf("falco rule %q listed twice", f.Rule))
		}
		seen[f.Rule] = true
		if !slices.Contains(maturities, f.Maturity) {
			errs = append(errs, fmt.Errorf("falco rule %q: maturity %q: want one of %v", f.Rule, f.Maturity, maturities))
		}
		n := 0
		for _, set := range []bool{len(f.CoveredBy) > 0, f.NotApplicable != "", f.Gap != ""} {
			if set {
				n++
			}
		}
		switch {
		case n != 1:
			errs = append(errs, fmt.Errorf("falco rule %q: want exactly one of covered_by, not_applicable, gap", f.Rule))
		case f.Maturity == "stable" && f.Gap != "":
			errs = append(errs, fmt.Errorf("falco rule %q is stable: cover it or say why it does not apply (gap: %s)", f.Rule, f.Gap))
		}
	}
	return &ref, errors.Join(errs...)
}

// Check reports the covered_by ids that are not enabled rules of set.
func (ref *Reference) Check(set *rules.Set) error {
	var errs []error
	for _, f := range ref.Falco {
		for _, id := range f.CoveredBy {
			r := set.Rule(id)
			switch {
			case r == nil:
				errs = append(errs, fmt.Errorf("falco rule %q: covered by %q, which is not a shipped rule", f.Rule, id))
			case !r.Enabled:
				errs = append(errs, fmt.Errorf("falco rule %q: covered by %q, which is disabled", f.Rule, id))
			}
		}
	}
	return errors.Join(errs...)
}

// Counts is the coverage of one maturity level.
type Counts struct {
	Total, Covered, NotApplicable, Gap int
}

// Applicable is the number of rules that apply to containers.
func (c Counts) Applicable() int { return c.Total - c.NotApplicable }

// Percent is the share of applicable rules covered.
func (c Counts) Percent() float64 {
	if c.Applicable() == 0 {
		return 100
	}
	return 100 * float64(c.Covered) / float64(c.Applicable())
}

// Count returns the coverage per maturity level.
func (ref *Reference) Count() map[string]Counts {
	out := map[string]Counts{}
	for _, f := range ref.Falco {
		c := out[f.Maturity]
		c.Total++
		switch {
		case len(f.CoveredBy) > 0:
			c.Covered++
		case f.NotApplicable != "":
			c.NotApplicable++
		default:
			c.Gap++
		}
		out[f.Maturity] = c
	}
	return out
}

// FalcoTable renders the coverage summary and one table per maturity level.
func (ref *Reference) FalcoTable(set *rules.Set) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Generated from `services/detector/internal/coverage/falco.yaml` and the shipped rules against %s at commit `%s`.\n\n",
		ref.Source.Repository, ref.Source.Commit)
	counts := ref.Count()
	b.WriteString("| Falco maturity | Rules | Apply to containers | Covered | Not applicable | Not covered | Coverage |\n|---|---|---|---|---|---|---|\n")
	var all Counts
	for _, m := range maturities {
		c := counts[m]
		all.Total += c.Total
		all.Covered += c.Covered
		all.NotApplicable += c.NotApplicable
		all.Gap += c.Gap
		fmt.Fprintf(&b, "| %s (`%s`) | %d | %d | %d | %d | %d | %.0f %% |\n", m, ref.Source.Files[m], c.Total, c.Applicable(), c.Covered, c.NotApplicable, c.Gap, c.Percent())
	}
	fmt.Fprintf(&b, "| all | %d | %d | %d | %d | %d | %.0f %% |\n", all.Total, all.Applicable(), all.Covered, all.NotApplicable, all.Gap, all.Percent())
	for _, m := range maturities {
		fmt.Fprintf(&b, "\n#### Falco %s rules\n\n| Falco rule | whalewatch rules (severity) | Notes |\n|---|---|---|\n", m)
		for _, f := range ref.Falco {
			if f.Maturity != m {
				continue
			}
			var cover, note string
			switch {
			case len(f.CoveredBy) > 0:
				ids := make([]string, len(f.CoveredBy))
				for i, id := range f.CoveredBy {
					sev := "?"
					if r := set.Rule(id); r != nil {
						sev = string(r.Severity)
					}
					ids[i] = fmt.Sprintf("`%s` (%s)", id, sev)
				}
				cover, note = strings.Join(ids, ", "), f.Note
			case f.NotApplicable != "":
				cover, note = "not applicable", f.NotApplicable
			default:
				cover, note = "**not covered**", f.Gap
			}
			fmt.Fprintf(&b, "| %s | %s | %s |\n", cell(f.Rule), cover, cell(note))
		}
	}
	return b.String()
}

// AttackTable renders the ATT&CK Containers techniques with the rules that
// detect them, then the other techniques the shipped rules map to.
func (ref *Reference) AttackTable(set *rules.Set) string {
	byTech := map[string][]string{}
	names := map[string]string{}
	for _, r := range set.Rules() {
		if !r.Enabled {
			continue
		}
		byTech[r.TechniqueID] = append(byTech[r.TechniqueID], r.ID)
		names[r.TechniqueID] = r.Technique
	}
	inMatrix := map[string]bool{}
	covered := 0
	var rows strings.Builder
	for _, t := range ref.Container {
		var ids []string
		for tech, rs := range byTech {
			if tech == t.ID || strings.HasPrefix(tech, t.ID+".") {
				inMatrix[tech] = true
				ids = append(ids, rs...)
			}
		}
		cover := "—"
		if len(ids) > 0 {
			covered++
			sort.Strings(ids)
			cover = "`" + strings.Join(ids, "`, `") + "`"
		}
		fmt.Fprintf(&rows, "| %s | %s | %s | %s |\n", t.ID, cell(t.Name), strings.Join(t.Tactics, ", "), cover)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d of the %d techniques of the ATT&CK Containers matrix have at least one shipped rule.\n\n", covered, len(ref.Container))
	b.WriteString("| Technique | Name | Tactics | whalewatch rules |\n|---|---|---|---|\n")
	b.WriteString(rows.String())
	var other []string
	for tech := range byTech {
		if !inMatrix[tech] {
			other = append(other, tech)
		}
	}
	sort.Strings(other)
	b.WriteString("\nTechniques outside the Containers matrix (Linux matrix) that shipped rules detect:\n\n| Technique | Name | whalewatch rules |\n|---|---|---|\n")
	for _, tech := range other {
		ids := slices.Clone(byTech[tech])
		sort.Strings(ids)
		fmt.Fprintf(&b, "| %s | %s | `%s` |\n", tech, cell(names[tech]), strings.Join(ids, "`, `"))
	}
	return b.String()
}

// cell escapes text for a markdown table cell.
func cell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
