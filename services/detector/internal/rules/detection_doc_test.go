package rules

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/testkit/golden"
)

const detectionDoc = "../../../../docs/DETECTION.md"

// TestDetectionDoc keeps the severity table of docs/DETECTION.md equal to the
// shipped rule files. Regenerate with:
//
//	go test ./internal/rules -run TestDetectionDoc -update
func TestDetectionDoc(t *testing.T) {
	data, err := os.ReadFile(detectionDoc)
	require.NoError(t, err)
	doc := replaceBetween(t, string(data), "severity", SeverityTable(shippedSet(t)))
	golden.Check(t, detectionDoc, []byte(doc))
}

func TestCLIDoc(t *testing.T) {
	t.Parallel()
	var out, errOut strings.Builder
	require.Equal(t, 0, Main([]string{"doc", "-rules-disable", "tag:configuration"}, &out, &errOut), errOut.String())
	require.Contains(t, out.String(), "| critical | `netcat-shell` |")
	require.NotContains(t, out.String(), "container-privileged", "disabled rules are not listed")
}
