package rules

import (
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/services/detector/internal/state"
	"github.com/whalewatch/whalewatch/testkit/golden"
)

const readme = "../../README.md"

// TestReadmeTables keeps the generated parts of the detector's README (the
// shipped rules, the state fields and the helper functions) equal to the
// code. Regenerate with: go test ./internal/rules -run TestReadmeTables -update
func TestReadmeTables(t *testing.T) {
	data, err := os.ReadFile(readme)
	require.NoError(t, err)
	doc := string(data)
	doc = replaceBetween(t, doc, "rules", rulesTable(shippedSet(t)))
	doc = replaceBetween(t, doc, "state", stateTable())
	doc = replaceBetween(t, doc, "functions", "- "+strings.Join(FunctionDocs(), "\n- ")+"\n")
	golden.Check(t, readme, []byte(doc))
}

func replaceBetween(tb testing.TB, doc, name, content string) string {
	begin, end := "<!-- "+name+":begin -->\n", "<!-- "+name+":end -->"
	i, j := strings.Index(doc, begin), strings.Index(doc, end)
	require.True(tb, i >= 0 && j > i, "README lacks the %s markers", name)
	return doc[:i+len(begin)] + content + doc[j:]
}

func rulesTable(s *Set) string {
	var b strings.Builder
	b.WriteString("| Rule id | Severity | Telemetry | ATT&CK tactic | ATT&CK technique | Detects |\n|---|---|---|---|---|---|\n")
	for _, r := range s.Rules() {
		kinds := make([]string, len(r.Kinds))
		for i, k := range r.Kinds {
			kinds[i] = string(k)
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s %s | %s %s | %s |\n", r.ID, r.Severity, strings.Join(kinds, ", "),
			r.TacticID, r.Tactic, r.TechniqueID, r.Technique, r.Name)
	}
	return b.String()
}

func stateTable() string {
	var b strings.Builder
	b.WriteString("| Field | Type |\n|---|---|\n")
	t := reflect.TypeOf(state.Snapshot{})
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		fmt.Fprintf(&b, "| `state.%s` | %s |\n", f.Tag.Get("expr"), f.Type)
	}
	return b.String()
}
