package indexer

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// FuzzESSink sends documents carrying hostile strings (newlines, quotes,
// invalid UTF-8, JSON fragments) through the sink to the stub, which parses
// NDJSON strictly: whatever a container writes, the framing holds and the
// stored document is the one published.
// Run: go test -run '^$' -fuzz FuzzESSink ./internal/indexer
func FuzzESSink(f *testing.F) {
	f.Add("0123abcd", "nc -lvp 4444", "com.example.label", "value", "message")
	f.Add("id\n{\"create\":{}}", "sh -c 'echo \"}\n{\"'", "a.b.c\n", "\x00\xff", "\u2028<script>")
	f.Add("x", "", "", "", "")
	s, es := newESSinkUnderTest(f)
	f.Fuzz(func(t *testing.T, id, commandLine, labelKey, labelValue, message string) {
		e := telemetry(event.TelemetryProcess)
		e.Event.ID = id
		e.Process.CommandLine = commandLine
		e.Container.Labels = map[string]string{labelKey: labelValue}
		e.Message = message
		e.Bound()
		// As in the pipeline: the consumer decodes what the publisher encoded.
		b, err := event.Marshal(e)
		require.NoError(t, err)
		d, err := newPreparer("default", "test", newDocumentsCounter(prometheus.NewRegistry())).prepare(b)
		if err != nil {
			require.ErrorIs(t, err, event.ErrInvalid)
			return // dead-lettered by the consumer, never reaches a sink
		}
		es.Reset()
		require.Equal(t, []error{nil}, s.Write(context.Background(), []Doc{d}))
		docs := es.AllDocs()
		require.Len(t, docs, 1)
		require.Equal(t, d.ID, docs[0].ID)
		require.JSONEq(t, string(d.Prefix)+string(d.Body), string(docs[0].Source))
	})
}

// FuzzPrepare feeds prepare whatever bytes a NATS payload may hold: it never
// panics, refuses only with event.ErrInvalid (the consumer dead-letters the
// message), and what it accepts is one line of JSON, an object, with _id its
// event.id and a data_stream that routes to a known dataset.
// Run: go test -run '^$' -fuzz FuzzPrepare ./internal/indexer
func FuzzPrepare(f *testing.F) {
	f.Add([]byte(marshal(f, telemetry(event.TelemetryProcess))))
	f.Add([]byte(marshal(f, threat("suspicious-tool-netcat"))))
	complete := telemetry(event.TelemetryNetwork)
	complete.Complete(&event.Agent{Type: "whalewatch-collector", Version: "v1"})
	f.Add([]byte(marshal(f, complete)))
	f.Add([]byte("{\n\"ecs\":{\"version\":\"8.17.0\"},\"event\":{\"id\":\"a\",\"kind\":\"event\"},\"host\":{\"name\":\"h\"},\"@timestamp\":\"2024-01-01T00:00:00Z\",\"whalewatch\":{\"schema_version\":\"1\",\"telemetry\":\"process\"}}"))
	f.Add([]byte(`{"ecs":{},"event":{"id":"a\u2028","kind":"alert"},"rule":{"id":"r"},"host":{"name":"h"},"@timestamp":"2024-01-01T00:00:00Z","whalewatch":{"schema_version":"1.0","severity":"high"}}`))
	p := newPreparer("default", "test", newDocumentsCounter(prometheus.NewRegistry()))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := p.prepare(data)
		if err != nil {
			require.ErrorIs(t, err, event.ErrInvalid)
			return
		}
		stored := append(append([]byte{}, d.Prefix...), d.Body...)
		require.NotContains(t, string(stored), "\n", "NDJSON framing")
		var doc struct {
			Event struct {
				ID string `json:"id"`
			} `json:"event"`
			DataStream *event.DataStream `json:"data_stream"`
		}
		require.NoError(t, json.Unmarshal(stored, &doc), "%q", stored)
		require.Equal(t, d.ID, doc.Event.ID)
		require.NotEmpty(t, d.ID)
		require.Contains(t, p.prefixes, d.Dataset, "dataset %q", d.Dataset)
		if doc.DataStream != nil && !bytes.Contains(data, []byte(`"data_stream"`)) {
			require.Equal(t, d.Dataset, doc.DataStream.Dataset)
		}
	})
}

// FuzzScanBulkSummary: whatever Elasticsearch (or a proxy before it) answers,
// scanBulkSummary never panics and agrees with encoding/json on well-formed
// answers.
// Run: go test -run '^$' -fuzz FuzzScanBulkSummary ./internal/indexer
func FuzzScanBulkSummary(f *testing.F) {
	f.Add([]byte(`{"took":3,"errors":false,"items":[{"create":{"status":201}}]}`))
	f.Add([]byte(`{"errors":true,"items":[{"create":{"status":409,"error":{"type":"x","reason":"\"}]"}}}]}`))
	f.Add([]byte(`<html>502 Bad Gateway</html>`))
	f.Fuzz(func(t *testing.T, data []byte) {
		failed, items, err := scanBulkSummary(data)
		var want struct {
			Errors bool              `json:"errors"`
			Items  []json.RawMessage `json:"items"`
		}
		if err != nil || json.Unmarshal(data, &want) != nil {
			return // scanBulkSummary is lenient on separators; a malformed answer is retried either way
		}
		require.Equal(t, want.Errors, failed, "%q", data)
		require.Equal(t, len(want.Items), items, "%q", data)
	})
}
