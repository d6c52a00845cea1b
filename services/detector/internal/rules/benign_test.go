package rules

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// TestBenignSamplesStayBelowHigh: the benign workloads' samples (package
// installs, log rotation, health checks, CGI scripts, entrypoints, the
// runtime itself) raise nothing high or critical, whatever they expect.
func TestBenignSamplesStayBelowHigh(t *testing.T) {
	t.Parallel()
	set := shippedSet(t)
	n := 0
	for _, s := range readAllSamples(t) {
		if !strings.HasPrefix(filepath.Base(s.file), "benign-") {
			continue
		}
		n++
		res := Check(set, &s.Sample)
		for _, m := range res.Matches {
			require.Less(t, m.Rule.Severity.Score(), event.SeverityHigh.Score(),
				fmt.Sprintf("%s:%d: %s %s", s.file, s.Line, m.Rule.Severity, m.Rule.ID))
		}
	}
	require.Positive(t, n, "no benign-*.jsonl samples")
}
