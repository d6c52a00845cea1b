package rules

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
)

type loadedSample struct {
	file string
	Sample
}

func readAllSamples(tb testing.TB) []loadedSample {
	tb.Helper()
	files, err := filepath.Glob("testdata/samples/*.jsonl")
	require.NoError(tb, err)
	require.NotEmpty(tb, files)
	var out []loadedSample
	for _, f := range files {
		data, err := os.ReadFile(f)
		require.NoError(tb, err)
		ss, err := ReadSamples(bytes.NewReader(data))
		require.NoError(tb, err, f)
		for _, s := range ss {
			require.NotNil(tb, s.Expect, "%s:%d: a test sample says what it expects", f, s.Line)
			out = append(out, loadedSample{file: filepath.Base(f), Sample: s})
		}
	}
	return out
}

// TestSamples runs every sample under testdata/samples through the shipped
// rules: each raises exactly the rules it expects.
func TestSamples(t *testing.T) {
	t.Parallel()
	set := shippedSet(t)
	for _, s := range readAllSamples(t) {
		t.Run(fmt.Sprintf("%s:%d", s.file, s.Line), func(t *testing.T) {
			t.Parallel()
			res := Check(set, &s.Sample)
			require.Empty(t, res.Failure)
			for _, m := range res.Matches {
				require.NotEmpty(t, m.Message)
			}
		})
	}
}

// TestEveryRuleHasSamples: each shipped rule has a positive sample and a
// negative one of a telemetry kind it reads.
func TestEveryRuleHasSamples(t *testing.T) {
	t.Parallel()
	set := shippedSet(t)
	samples := readAllSamples(t)
	for _, r := range set.Rules() {
		pos, neg := 0, 0
		for _, s := range samples {
			switch {
			case slices.Contains(s.Expect, r.ID):
				pos++
			case slices.Contains(r.Kinds, s.Event.Whalewatch.Telemetry):
				neg++
			}
		}
		require.Positive(t, pos, "rule %s has no positive sample", r.ID)
		require.Positive(t, neg, "rule %s has no negative sample", r.ID)
	}
}

func TestReadSamples(t *testing.T) {
	t.Parallel()
	bare := `{"@timestamp":"2026-11-26T20:00:00Z","event":{"id":"a","kind":"event"},"host":{"name":"h"},"process":{"args":["nc","-l"]},"whalewatch":{"schema_version":"1.0","telemetry":"process"}}`
	in := strings.Join([]string{
		"// comment", "",
		bare,
		`{"event":{"process":{"args":["x"]},"whalewatch":{"telemetry":"process"}},"state":{"distinct_dest_ports":3,"anomaly_features":["cpu"]},"expect":[]}`,
	}, "\n")
	ss, err := ReadSamples(strings.NewReader(in))
	require.NoError(t, err)
	require.Len(t, ss, 2)
	require.Equal(t, 3, ss[0].Line)
	require.Nil(t, ss[0].Expect, "a bare event has no expectation")
	require.Equal(t, []string{"nc", "-l"}, ss[0].Event.Process.Args)
	require.Equal(t, 3, ss[1].State.DistinctDestPorts)
	require.Equal(t, []string{"cpu"}, ss[1].State.AnomalyFeatures)
	require.NotNil(t, ss[1].Expect)
	require.Equal(t, event.KindEvent, ss[1].Event.Event.Kind)

	for _, bad := range []string{
		`{"event":{},"state":{"no_such":1}}`,
		`{"event":{},"expect":"x"}`,
		`{"evnt":{}}`,
		`not json`,
	} {
		_, err := ReadSamples(strings.NewReader(bad))
		require.Error(t, err, bad)
		require.Contains(t, err.Error(), "line 1")
	}
}

// FuzzEvaluate runs the shipped rules on arbitrary telemetry: hostile
// events never make evaluation panic.
func FuzzEvaluate(f *testing.F) {
	for _, s := range readAllSamples(f) {
		b, err := json.Marshal(s.Event)
		if err == nil {
			f.Add(b)
		}
	}
	set := shippedSet(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		var e event.Event
		if json.Unmarshal(data, &e) != nil {
			return
		}
		e.Bound()
		for _, m := range set.Evaluate(&e, nil) {
			if len(m.Message) > maxOutput {
				t.Fatalf("message of %d bytes", len(m.Message))
			}
		}
	})
}
