package coverage

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/services/detector/internal/rules"
	"github.com/whalewatch/whalewatch/testkit/golden"
)

const detectionDoc = "../../../../docs/DETECTION.md"

func shippedSet(tb testing.TB) *rules.Set {
	tb.Helper()
	srcs, err := rules.Shipped()
	require.NoError(tb, err)
	set, err := rules.Load(srcs, rules.Options{})
	require.NoError(tb, err)
	return set
}

// TestReference: every Falco rule of the reference is covered by shipped,
// enabled rules or explained, and every stable one that applies is covered.
func TestReference(t *testing.T) {
	t.Parallel()
	ref, err := Load()
	require.NoError(t, err)
	require.NoError(t, ref.Check(shippedSet(t)))
	c := ref.Count()["stable"]
	require.Positive(t, c.Total)
	require.Equal(t, c.Applicable(), c.Covered, "every stable Falco rule that applies to containers has a counterpart")
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, yaml, want string }{
		{"stable gap", "falco:\n  - {rule: A, maturity: stable, gap: later}\n", `falco rule "A" is stable`},
		{"nothing said", "falco:\n  - {rule: A, maturity: sandbox}\n", "want exactly one of"},
		{"two said", "falco:\n  - {rule: A, maturity: sandbox, gap: x, not_applicable: y}\n", "want exactly one of"},
		{"duplicate", "falco:\n  - {rule: A, maturity: sandbox, gap: x}\n  - {rule: A, maturity: sandbox, gap: x}\n", "listed twice"},
		{"maturity", "falco:\n  - {rule: A, maturity: beta, gap: x}\n", `maturity "beta"`},
		{"unknown key", "falco:\n  - {rule: A, maturity: sandbox, covered: [x]}\n", "field covered not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse([]byte(tc.yaml))
			require.ErrorContains(t, err, tc.want)
		})
	}
	ref, err := Parse([]byte("falco:\n  - {rule: A, maturity: stable, covered_by: [no-such-rule]}\n"))
	require.NoError(t, err)
	require.ErrorContains(t, ref.Check(shippedSet(t)), `covered by "no-such-rule", which is not a shipped rule`)
}

// TestDetectionDoc keeps the generated sections of docs/DETECTION.md equal
// to the rules and the reference. Regenerate with:
//
//	cd services/detector && go test ./internal/coverage -run TestDetectionDoc -update
func TestDetectionDoc(t *testing.T) {
	ref, err := Load()
	require.NoError(t, err)
	set := shippedSet(t)
	data, err := os.ReadFile(detectionDoc)
	require.NoError(t, err)
	doc := replaceBetween(t, string(data), "falco-coverage", ref.FalcoTable(set))
	doc = replaceBetween(t, doc, "attack-containers", ref.AttackTable(set))
	golden.Check(t, detectionDoc, []byte(doc))
}

func replaceBetween(tb testing.TB, doc, name, content string) string {
	begin, end := "<!-- "+name+":begin -->\n", "<!-- "+name+":end -->"
	i, j := strings.Index(doc, begin), strings.Index(doc, end)
	require.True(tb, i >= 0 && j > i, "%s lacks the %s markers", detectionDoc, name)
	return doc[:i+len(begin)] + content + doc[j:]
}
