package rules

import (
	"maps"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestToolGate(t *testing.T) {
	t.Parallel()
	c := &compiler{
		lists:  map[string]*namedList{"nets": {items: []string{"nc", "ncat"}}},
		macros: map[string]*namedMacro{"is_nc": {src: "process.tool in nets"}, "is_exec": {src: `whalewatch.telemetry == "process"`}},
	}
	for _, tc := range []struct {
		cond string
		want []string // nil: no gate
	}{
		{`process.tool in nets && is_exec`, []string{"nc", "ncat"}},
		{`process.tool == "find" && is_exec && process.args_count > 1`, []string{"find"}},
		{`(process.tool in ["grep", "rg"] || process.tool == "find") && is_exec`, []string{"find", "grep", "rg"}},
		{`is_nc && is_exec`, []string{"nc", "ncat"}},
		{`is_exec && process.tool in nets`, []string{"nc", "ncat"}},
		{`is_exec && (process.args_count > 2 && process.tool == "nc")`, []string{"nc"}},
		{`is_exec && (process.args_count > 2 || process.tool == "nc")`, nil},
		{`process.tool in nets || is_exec`, nil},
		{`(process.tool in nets || is_exec) && is_exec`, nil},
		{`process.tool != "nc" && is_exec`, nil},
		{`process.name in nets && is_exec`, nil},
		{`!(process.tool in nets) && is_exec`, nil},
	} {
		got := c.toolGate(tc.cond)
		if tc.want == nil {
			require.Nil(t, got, tc.cond)
			continue
		}
		require.Equal(t, tc.want, slices.Sorted(maps.Keys(got)), tc.cond)
	}
}

// TestToolGateChangesNothing: every sample raises the same threats with the
// gates as when every rule runs.
func TestToolGateChangesNothing(t *testing.T) {
	t.Parallel()
	gated, ungated := shippedSet(t), shippedSet(t)
	n := 0
	for _, cs := range ungated.byKind {
		for _, c := range cs {
			if c.tools != nil {
				n++
				c.tools = nil
			}
		}
	}
	require.Positive(t, n, "no shipped rule is gated")
	for _, s := range readAllSamples(t) {
		st := s.State
		a, b := gated.Evaluate(s.Event, &st), ungated.Evaluate(s.Event, &st)
		require.Equal(t, len(b), len(a), "%s:%d", s.file, s.Line)
		for i := range a {
			require.Equal(t, b[i].Rule.ID, a[i].Rule.ID, "%s:%d", s.file, s.Line)
			require.Equal(t, b[i].Message, a[i].Message, "%s:%d", s.file, s.Line)
		}
	}
}
