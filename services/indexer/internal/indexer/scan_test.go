package indexer

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// scanDoc agrees with encoding/json on what is a JSON object and on the
// fields it reads.
func TestScanDoc(t *testing.T) {
	t.Parallel()
	tests := []string{
		marshal(t, threat("r")),
		marshal(t, telemetry(event.TelemetryProcess)),
		`{}`,
		` {"a":1} `,
		"{\n\"event\": {\"id\": \"a\\u0041\\n\", \"kind\": \"event\"},\n\"host\":{\"name\":\"h\"}}",
		`{"event":{"id":1},"rule":{"id":"x"},"ecs":{"version":"8"},"data_stream":null}`,
		`{"a":[1,-2.5e+3,true,false,null,"s",{"b":[]}],"event":{"x":{"id":"deep"}}}`,
		`{"@timestamp":"2024-01-01T00:00:00Z","whalewatch":{"schema_version":"1.1","telemetry":"log","severity":"high"}}`,
		`[1]`, `"s"`, `{`, `{"a"}`, `{"a":}`, `{"a":1,}`, `{"a":01}`, `{"a":1.}`, `{"a":-}`, `{"a":tru}`,
		`{"a":"\x"}`, `{"a":"\u12"}`, "{\"a\":\"\x01\"}", `{"a":1} x`, `{"a":[1,]}`, `{"a":1}{}`, ``, `{"a":nul}`,
		`{"a":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}`,
	}
	for _, doc := range tests {
		checkScan(t, []byte(doc))
	}
}

func checkScan(t *testing.T, data []byte) {
	t.Helper()
	var got probe
	newline, err := scanDoc(data, &got)
	var want probe
	werr := json.Unmarshal(data, &want)
	var m map[string]json.RawMessage
	isObject := json.Unmarshal(data, &m) == nil && m != nil
	if err != nil {
		require.False(t, isObject && depth(data) <= maxDepth, "scanDoc refused %q: %v", data, err)
		return
	}
	require.True(t, isObject, "scanDoc accepted %q", data)
	// encoding/json reads non-string values into strings as errors; compare
	// only documents it reads cleanly.
	if werr == nil {
		require.Equal(t, want.Event, got.Event, "%q", data)
		require.Equal(t, want.Host, got.Host, "%q", data)
		require.Equal(t, want.Whalewatch.SchemaVersion, got.Whalewatch.SchemaVersion)
		require.Equal(t, want.Whalewatch.Telemetry, got.Whalewatch.Telemetry)
		require.Equal(t, want.Whalewatch.Severity, got.Whalewatch.Severity)
		require.Equal(t, want.Timestamp, got.Timestamp)
		require.Equal(t, want.Rule, got.Rule)
		require.Equal(t, string(want.ECS), string(got.ECS))
		require.Equal(t, string(want.DataStream), string(got.DataStream))
	}
	require.Equal(t, containsNewlineOutsideStrings(data), newline)
}

func depth(data []byte) int {
	d, m := 0, 0
	for _, c := range data {
		switch c {
		case '{', '[':
			d++
			m = max(m, d)
		case '}', ']':
			d--
		}
	}
	return m
}

func containsNewlineOutsideStrings(data []byte) bool {
	in, esc := false, false
	for _, c := range data {
		switch {
		case esc:
			esc = false
		case in && c == '\\':
			esc = true
		case c == '"':
			in = !in
		case !in && c == '\n':
			return true
		}
	}
	return false
}

// FuzzScanDoc: whatever a publisher sends, scanDoc agrees with encoding/json.
// Run: go test -run '^$' -fuzz FuzzScanDoc ./internal/indexer
func FuzzScanDoc(f *testing.F) {
	f.Add([]byte(`{"event":{"id":"a","kind":"alert"},"rule":{"id":"r"}}`))
	f.Add([]byte("{\"a\":[1,2,{\"b\":\"\\u00e9\"}],\n\"host\":{\"name\":\"h\"}}"))
	f.Add([]byte(`{"a":1e5,"b":-0.5,"c":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkScan(t, data)
	})
}

func TestScanBulkSummary(t *testing.T) {
	t.Parallel()
	tests := []struct {
		body    string
		failed  bool
		items   int
		wantErr bool
	}{
		{`{"took":3,"errors":false,"items":[{"create":{"status":201}},{"create":{"status":201,"_id":"a"}}]}`, false, 2, false},
		{`{"errors":true,"items":[{"create":{"status":409,"error":{"type":"x"}}}]}`, true, 1, false},
		{`{"errors":false,"items":[]}`, false, 0, false},
		{`{"items":[{}],"errors":false}`, false, 1, false},
		{`{"errors":false,"items":[{}`, false, 0, true},
		{`{"errors":false,"items":[{}]`, false, 0, true},
		{`not json`, false, 0, true},
	}
	for _, tt := range tests {
		failed, n, err := scanBulkSummary([]byte(tt.body))
		if tt.wantErr {
			require.Error(t, err, tt.body)
			continue
		}
		require.NoError(t, err, tt.body)
		require.Equal(t, tt.failed, failed, tt.body)
		require.Equal(t, tt.items, n, tt.body)
	}
}
