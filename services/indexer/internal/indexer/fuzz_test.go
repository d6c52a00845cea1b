package indexer

import (
	"context"
	"testing"

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
		d, err := newPreparer("default", "test").prepare(b)
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
