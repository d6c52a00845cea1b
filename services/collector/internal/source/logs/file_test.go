package logs

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/services/collector/internal/source"
	"github.com/whalewatch/whalewatch/services/collector/internal/source/sourcetest"
)

// appendRecords writes json-file records as the driver does, one write each.
func appendRecords(t *testing.T, path string, recs ...record) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	require.NoError(t, err)
	defer f.Close()
	for _, r := range recs {
		b, err := json.Marshal(r)
		require.NoError(t, err)
		_, err = f.Write(append(b, '\n'))
		require.NoError(t, err)
	}
}

func out(s string) record { return record{Log: s, Stream: "stdout", Time: time.Now().UTC()} }

// lines are the published lines, "stream:line", in order.
func (c *collected) lines() []string {
	var got []string
	for _, e := range c.all() {
		for _, l := range e.Whalewatch.Log.Lines {
			got = append(got, e.Whalewatch.Log.Stream+":"+l)
		}
	}
	return got
}

func TestFileTailFollowsRotation(t *testing.T) {
	t.Parallel()
	for _, watch := range []bool{true, false} {
		t.Run(map[bool]string{true: "inotify", false: "polled"}[watch], func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := filepath.Join(dir, "c1-json.log")
			appendRecords(t, path, out("history, never re-read\n"))
			l := New(&fakeLogs{}, Config{Enabled: true, Source: SourceFile, BatchLines: 100, BatchInterval: 5 * time.Millisecond, MaxLinesPerSecond: 1000},
				"h", quietLog(), testCounter(), newReg())
			t.Cleanup(func() { require.NoError(t, l.Close()) })
			if !watch && l.watch != nil {
				require.NoError(t, l.watch.close())
				l.watch, l.poll = nil, 5*time.Millisecond
			}
			var got collected
			ctr := &source.Container{ID: "c1", LogDriver: "json-file", LogPath: path, StartedAt: time.Now().Add(-time.Hour)}
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error, 1)
			go func() { done <- l.Monitor(ctx, ctr, got.emit) }()
			t.Cleanup(func() {
				cancel()
				require.NoError(t, <-done)
			})

			// The reader counts itself once it is at the end of the file.
			require.Eventually(t, func() bool {
				return testutil.ToFloat64(l.m.readers.WithLabelValues(SourceFile)) == 1
			}, 10*time.Second, time.Millisecond)
			base := 0

			appendRecords(t, path, out("one\n"), record{Log: "two ", Stream: "stderr", Time: time.Now()},
				record{Log: "halves\n", Stream: "stderr", Time: time.Now()})
			// A partial record: the rest comes in a later write.
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			require.NoError(t, err)
			_, err = f.WriteString(`{"log":"thr`)
			require.NoError(t, err)
			_, err = f.WriteString(`ee\n","stream":"stdout","time":"2026-11-26T20:00:00Z"}` + "\n")
			require.NoError(t, err)
			require.NoError(t, f.Close())
			// Rotation: rename, a new file, and a compressed older one (ignored).
			require.NoError(t, os.Rename(path, path+".1"))
			require.NoError(t, os.WriteFile(path+".2.gz", []byte("not read"), 0o640))
			appendRecords(t, path, out("four\n"), out("not json"), out("five\n"))
			appendRecords(t, path+".1", out("late in the rotated file\n")) // the driver never does this; the reader still had it open
			require.NoError(t, os.WriteFile(path+".bad", nil, 0o640))
			// hostile: an oversized record and one that is not JSON
			fb, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			require.NoError(t, err)
			_, _ = fb.WriteString(`{"log":"` + strings.Repeat("x", maxRecord) + `"}` + "\n" + "garbage\n")
			require.NoError(t, fb.Close())
			appendRecords(t, path, out("six\n"))

			// Batches are by stream: the order holds within a stream.
			want := []string{"stdout:one", "stdout:three", "stdout:four", "stdout:not jsonfive", "stdout:six", "stderr:two halves"}
			require.Eventually(t, func() bool {
				return slices.Contains(got.lines(), "stdout:six") && slices.Contains(got.lines(), "stderr:two halves")
			}, 10*time.Second, 10*time.Millisecond, "%q", lazy(got.lines))
			g := got.lines()[base:]
			require.Contains(t, g, "stdout:one")
			require.NotContains(t, g, "stdout:history, never re-read")
			// "late in the rotated file" may or may not be read, depending on
			// whether the rotation was seen before it was written.
			filtered := g[:0:0]
			for _, s := range g {
				if s != "stdout:late in the rotated file" && s != "stdout:ping" && strings.HasPrefix(s, "stdout:") {
					filtered = append(filtered, s)
				}
			}
			filtered = append(filtered, "stderr:two halves")
			require.Equal(t, want, filtered)
			require.Equal(t, 2.0, testutil.ToFloat64(l.m.bad), "the oversized record and the garbage")
			require.Equal(t, 1.0, testutil.ToFloat64(l.m.readers.WithLabelValues(SourceFile)))
		})
	}
}

func TestFileTailMissedRotationAndFallback(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "c2-json.log")
	appendRecords(t, path, out("a\n"))
	l := New(&fakeLogs{body: []string{"x\n"}}, Config{Enabled: true, Source: SourceAuto, BatchLines: 100, BatchInterval: 5 * time.Millisecond, MaxLinesPerSecond: 1000},
		"h", quietLog(), testCounter(), newReg())
	t.Cleanup(func() { require.NoError(t, l.Close()) })

	// Two rotations between two looks: the middle file is read whole.
	var got collected
	b := newLogBatcher(l, "c2", got.emit)
	f, err := os.Open(path)
	require.NoError(t, err)
	tail := newFileTail(path, f, b, l)
	defer tail.close()
	tail.drain()
	require.NoError(t, os.Rename(path, path+".1"))
	appendRecords(t, path, out("b\n"))
	require.NoError(t, os.Rename(path+".1", path+".2"))
	require.NoError(t, os.Rename(path, path+".1"))
	appendRecords(t, path, out("c\n"))
	tail.drain()
	// Three more rotations, as the driver does with max-file=3: the file
	// the reader holds is deleted, the two after it were never opened.
	rotate := func() {
		_ = os.Remove(path + ".2")
		require.NoError(t, os.Rename(path+".1", path+".2"))
		require.NoError(t, os.Rename(path, path+".1"))
	}
	rotate()
	appendRecords(t, path, out("d\n"))
	rotate()
	appendRecords(t, path, out("e\n"))
	rotate()
	appendRecords(t, path, out("f\n"))
	tail.drain()
	b.close()
	require.Equal(t, []string{"stdout:a", "stdout:b", "stdout:c", "stdout:d", "stdout:e", "stdout:f"}, got.lines())

	// A file that cannot be opened: the Engine API stream (auto).
	var got2 collected
	ctr := &source.Container{ID: "c3", TTY: true, LogDriver: "json-file", LogPath: filepath.Join(dir, "missing-json.log")}
	require.NoError(t, l.Monitor(t.Context(), ctr, got2.emit))
	require.Equal(t, []string{"stdout:x"}, got2.lines())
	require.Equal(t, 1.0, testutil.ToFloat64(l.m.readers.WithLabelValues(SourceEngineAPI)))

	// Source file: no fallback.
	l.cfg.Source = SourceFile
	require.Error(t, l.Monitor(t.Context(), ctr, func(*event.Event) {}))
}

func newReg() *prometheus.Registry { return prometheus.NewRegistry() }

type lazy func() []string

func (l lazy) String() string { return strings.Join(l(), "|") }

// A young container's log is read from its rotated files first, oldest
// first, then the current file from its start.
func TestFileTailYoungContainerReadsRotatedFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "c4-json.log")
	appendRecords(t, path+".2", out("one\n"))
	appendRecords(t, path+".1", out("two\n"))
	appendRecords(t, path, out("three\n"))
	require.NoError(t, os.WriteFile(path+".3.gz", []byte("compressed: ignored"), 0o640))
	l := New(&fakeLogs{}, Config{Enabled: true, Source: SourceFile, BatchLines: 100, BatchInterval: time.Millisecond, MaxLinesPerSecond: 1000},
		"h", sourcetest.Log(), testCounter(), newReg())
	t.Cleanup(func() { require.NoError(t, l.Close()) })
	var got collected
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	ctr := &source.Container{ID: "c4", LogDriver: "json-file", LogPath: path, StartedAt: time.Now()}
	go func() { done <- l.Monitor(ctx, ctr, got.emit) }()
	require.Eventually(t, func() bool { return len(got.lines()) == 3 }, 10*time.Second, time.Millisecond)
	cancel()
	require.NoError(t, <-done)
	require.Equal(t, []string{"stdout:one", "stdout:two", "stdout:three"}, got.lines())
}
