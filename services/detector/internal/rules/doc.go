package rules

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// SeverityTable is the Markdown table of every enabled rule of s, most severe
// first: severity, rule, telemetry, ATT&CK technique and why (the rule's
// description). docs/DETECTION.md holds it for the shipped rules; `detector
// rules doc` prints it for any rule set, and a test keeps the document equal
// to the rule files.
func SeverityTable(s *Set) string {
	rs := slices.Clone(s.Rules())
	rs = slices.DeleteFunc(rs, func(r *Rule) bool { return !r.Enabled })
	slices.SortStableFunc(rs, func(a, b *Rule) int {
		return cmp.Compare(b.Severity.Score(), a.Severity.Score())
	})
	var b strings.Builder
	b.WriteString("| Severity | Rule | Telemetry | ATT&CK | Why |\n|---|---|---|---|---|\n")
	for _, r := range rs {
		kinds := make([]string, len(r.Kinds))
		for i, k := range r.Kinds {
			kinds[i] = string(k)
		}
		fmt.Fprintf(&b, "| %s | `%s` | %s | %s %s | %s |\n", r.Severity, r.ID, strings.Join(kinds, ", "),
			r.TechniqueID, cell(r.Technique), cell(r.Description))
	}
	counts := map[event.Severity]int{}
	for _, r := range rs {
		counts[r.Severity]++
	}
	fmt.Fprintf(&b, "\n%d rules: %d critical, %d high, %d medium, %d low.\n", len(rs),
		counts[event.SeverityCritical], counts[event.SeverityHigh], counts[event.SeverityMedium], counts[event.SeverityLow])
	return b.String()
}

// cell makes s safe in a Markdown table cell.
func cell(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	return strings.ReplaceAll(s, "|", `\|`)
}
