package logs

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/services/collector/internal/source"
)

type logLine struct {
	stream    int
	text      string
	truncated bool
}

func demuxAll(r io.Reader, tty bool) ([]logLine, error) {
	var got []logLine
	err := demuxLogs(r, tty, func(stream int, text []byte, truncated bool) {
		got = append(got, logLine{stream, string(text), truncated})
	})
	return got, err
}

func TestDemuxLogsStdcopy(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	out := stdcopy.NewStdWriter(&buf, stdcopy.Stdout)
	errw := stdcopy.NewStdWriter(&buf, stdcopy.Stderr)
	long := strings.Repeat("x", event.MaxLogLine+100)
	for _, w := range []struct {
		w io.Writer
		s string
	}{
		{out, "2026-11-26T20:00:00.000000001Z hel"}, {errw, "2026-11-26T20:00:00.000000002Z err\n"},
		{out, "lo\n"}, {out, long + "\nshort\r\n"}, {errw, "no newline at the end"},
	} {
		_, err := w.w.Write([]byte(w.s))
		require.NoError(t, err)
	}
	got, err := demuxAll(&buf, false)
	require.ErrorIs(t, err, io.EOF)
	require.Equal(t, []logLine{
		{streamStderr, "2026-11-26T20:00:00.000000002Z err", false},
		{streamStdout, "2026-11-26T20:00:00.000000001Z hello", false},
		{streamStdout, long[:event.MaxLogLine], true},
		{streamStdout, "short", false},
		{streamStderr, "no newline at the end", false}, // flushed at the end
	}, got)
}

func TestDemuxLogsTTY(t *testing.T) {
	t.Parallel()
	got, err := demuxAll(strings.NewReader("a\r\nb\n\nc"), true)
	require.ErrorIs(t, err, io.EOF)
	require.Equal(t, []logLine{
		{streamStdout, "a", false}, {streamStdout, "b", false}, {streamStdout, "", false}, {streamStdout, "c", false},
	}, got)
}

func TestDemuxLogsBadStreams(t *testing.T) {
	t.Parallel()
	frame := func(stream byte, size uint32, body string) []byte {
		h := []byte{stream, 0, 0, 0, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(h[4:], size)
		return append(h, body...)
	}
	tests := []struct {
		name    string
		in      []byte
		wantErr string
	}{
		{"engine error", frame(3, 5, "boom!"), "engine error: boom!"},
		{"unknown stream", frame(9, 1, "x"), "unknown stream 9"},
		{"short header", []byte{1, 0, 0}, "truncated frame header"},
		{"frame announces more than it has", frame(1, 1<<31, "abc\n"), "truncated frame"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := demuxAll(bytes.NewReader(tt.in), false)
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
}

func TestSplitTimestamp(t *testing.T) {
	t.Parallel()
	ts, text := splitTimestamp([]byte("2026-11-26T20:00:00.123456789Z hello world"))
	require.Equal(t, "hello world", string(text))
	require.Equal(t, int64(1795723200123456789), ts.UnixNano())
	ts, text = splitTimestamp([]byte("not a timestamp at all"))
	require.True(t, ts.IsZero())
	require.Equal(t, "not a timestamp at all", string(text))
}

func newTestLogMonitor(lines int, interval time.Duration, rate int, now func() time.Time) *Monitor {
	l := New(nil, Config{Enabled: true, Source: SourceEngineAPI, BatchLines: lines, BatchInterval: interval, MaxLinesPerSecond: rate},
		"h", quietLog(), testCounter(), prometheus.NewRegistry())
	l.now = now
	return l
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func testCounter() prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Name: "test"})
}

type collected struct {
	mu sync.Mutex
	es []*event.Event
}

func (c *collected) emit(e *event.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.es = append(c.es, e)
}

func (c *collected) all() []*event.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*event.Event(nil), c.es...)
}

func TestLogBatcherBatchesByCountAndTime(t *testing.T) {
	t.Parallel()
	l := newTestLogMonitor(3, 50*time.Millisecond, 1000, time.Now)
	var got collected
	b := newLogBatcher(l, "c1", got.emit)
	for i, s := range []string{"a", "b", "c", "d"} {
		b.timestamped(streamStdout, []byte("2026-11-26T20:00:0"+string(rune('0'+i))+"Z "+s), false)
	}
	b.timestamped(streamStderr, []byte("2026-11-26T20:00:09Z oops"), false)
	es := got.all()
	require.Len(t, es, 1, "a full batch is published at once")
	lb := es[0].Whalewatch.Log
	require.Equal(t, &event.LogBatch{Stream: "stdout", Lines: []string{"a", "b", "c"}}, lb)
	require.Equal(t, "2026-11-26T20:00:00Z", es[0].Timestamp.Format(time.RFC3339))
	es[0].Container = &event.Container{ID: "c1"}
	require.NoError(t, es[0].Validate())

	require.Eventually(t, func() bool { return len(got.all()) == 3 }, 5*time.Second, 5*time.Millisecond,
		"the partial batches follow after the batch interval")
	byStream := map[string][]string{}
	for _, e := range got.all()[1:] {
		byStream[e.Whalewatch.Log.Stream] = e.Whalewatch.Log.Lines
	}
	require.Equal(t, map[string][]string{"stdout": {"d"}, "stderr": {"oops"}}, byStream)
	b.close()
	require.Len(t, got.all(), 3, "nothing left to flush")
}

func TestLogBatcherRateLimit(t *testing.T) {
	t.Parallel()
	clock := time.Date(2026, 11, 26, 20, 0, 0, 0, time.UTC)
	now := func() time.Time { return clock }
	l := newTestLogMonitor(100, time.Hour, 10, now)
	var got collected
	b := newLogBatcher(l, "c1", got.emit)
	for range 25 {
		b.timestamped(streamStdout, []byte("spam"), false)
	}
	clock = clock.Add(500 * time.Millisecond) // 5 more tokens
	for range 10 {
		b.timestamped(streamStdout, []byte("spam"), false)
	}
	b.timestamped(streamStdout, []byte(strings.Repeat("y", event.MaxLogLine)), true) // dropped too
	b.close()
	es := got.all()
	require.Len(t, es, 1)
	lb := es[0].Whalewatch.Log
	require.Len(t, lb.Lines, 15)
	require.Equal(t, 21, lb.Dropped)
	require.Equal(t, 21.0, testutil.ToFloat64(l.m.lines.WithLabelValues("rate_limited")))
	require.Equal(t, 15.0, testutil.ToFloat64(l.m.lines.WithLabelValues("published")))
}

func TestLogBatcherDropsAloneAreReported(t *testing.T) {
	t.Parallel()
	l := newTestLogMonitor(100, 20*time.Millisecond, 1, time.Now)
	var got collected
	b := newLogBatcher(l, "c1", got.emit)
	b.timestamped(streamStderr, []byte("first"), false)
	require.Eventually(t, func() bool { return len(got.all()) == 1 }, 5*time.Second, 5*time.Millisecond)
	b.timestamped(streamStderr, []byte("dropped"), false)
	require.Eventually(t, func() bool { return len(got.all()) == 2 }, 5*time.Second, 5*time.Millisecond,
		"drops are reported even when no line follows")
	lb := got.all()[1].Whalewatch.Log
	require.Equal(t, &event.LogBatch{Stream: "stderr", Lines: []string{}, Dropped: 1}, lb)
	e := got.all()[1]
	e.Container = &event.Container{ID: "c1"}
	require.NoError(t, e.Validate())
	b.close()
}

func TestLogBatcherTruncatesAndBoundsBytes(t *testing.T) {
	t.Parallel()
	l := newTestLogMonitor(event.MaxLogLines, time.Hour, 1<<20, time.Now)
	var got collected
	b := newLogBatcher(l, "c1", got.emit)
	long := strings.Repeat("é", event.MaxLogLine/2) // cut at MaxLogLine bytes
	b.timestamped(streamStdout, []byte(long[:event.MaxLogLine-1]), true)
	hostile := strings.Repeat("<", event.MaxLogLine)
	for range 40 { // 40 lines of 6*4096 JSON bytes each exceed maxBatchJSON
		b.timestamped(streamStdout, []byte(hostile), false)
	}
	b.close()
	es := got.all()
	require.Greater(t, len(es), 1, "split by size")
	first := es[0].Whalewatch.Log
	require.Equal(t, 1, first.Truncated)
	require.True(t, strings.HasSuffix(first.Lines[0], event.Ellipsis))
	require.LessOrEqual(t, len(first.Lines[0]), event.MaxLogLine)
	total := 0
	for _, e := range es {
		data, err := event.Marshal(e)
		require.NoError(t, err)
		require.Less(t, len(data), 1<<20, "fits a NATS message")
		total += len(e.Whalewatch.Log.Lines)
	}
	require.Equal(t, 41, total)
}

// fakeLogs serves one log stream, then an error or EOF.
type fakeLogs struct {
	mu    sync.Mutex
	opts  []container.LogsOptions
	body  []string
	after error
}

func (f *fakeLogs) ContainerLogs(_ context.Context, _ string, o container.LogsOptions) (io.ReadCloser, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.opts = append(f.opts, o)
	if len(f.body) == 0 {
		return nil, errors.New("logging driver does not support reading")
	}
	b := f.body[0]
	f.body = f.body[1:]
	return io.NopCloser(io.MultiReader(strings.NewReader(b), errReader{f.after})), nil
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) {
	if e.err == nil {
		return 0, io.EOF
	}
	return 0, e.err
}

func TestLogMonitorStartsWhereItShould(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 26, 20, 0, 0, 0, time.UTC)
	tests := []struct {
		name      string
		started   time.Time
		wantTail  string
		wantSince string
	}{
		{"just started: from its start", now.Add(-3 * time.Second), "", "1795723192.000000000"},
		{"running for long: from the end", now.Add(-time.Hour), "0", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := &fakeLogs{body: []string{"x\n"}}
			l := newTestLogMonitor(10, time.Hour, 100, func() time.Time { return now })
			l.docker = f
			var got collected
			require.NoError(t, l.Monitor(t.Context(), &source.Container{ID: "c1", TTY: true, StartedAt: tt.started}, got.emit))
			require.Len(t, f.opts, 1, "EOF: the container's output ended")
			require.Equal(t, tt.wantTail, f.opts[0].Tail)
			require.Equal(t, tt.wantSince, f.opts[0].Since)
			require.True(t, f.opts[0].Follow && f.opts[0].Timestamps && f.opts[0].ShowStdout && f.opts[0].ShowStderr)
			require.Len(t, got.all(), 1)
		})
	}
}

func TestLogMonitorReconnectsAfterTheLastLine(t *testing.T) {
	t.Parallel()
	f := &fakeLogs{body: []string{"2026-11-26T20:00:05.5Z one\n", "2026-11-26T20:00:06Z two\n"}, after: io.ErrUnexpectedEOF}
	l := newTestLogMonitor(10, time.Hour, 100, time.Now)
	l.docker, l.backoff = f, time.Millisecond
	var got collected
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- l.Monitor(ctx, &source.Container{ID: "c1", TTY: true}, got.emit) }()
	require.Eventually(t, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.opts) >= 3
	}, 5*time.Second, time.Millisecond, "keeps reconnecting once it has read a line")
	cancel()
	require.NoError(t, <-done)
	f.mu.Lock()
	defer f.mu.Unlock()
	require.Equal(t, "1795723205.500000001", f.opts[1].Since, "resumes just after the last line read")
	require.Equal(t, "1795723206.000000001", f.opts[2].Since)
	require.Len(t, got.all(), 2)
}

func FuzzDemuxLogs(f *testing.F) {
	var buf bytes.Buffer
	w := stdcopy.NewStdWriter(&buf, stdcopy.Stdout)
	_, _ = w.Write([]byte("2026-11-26T20:00:00Z hello\nworld"))
	f.Add(buf.Bytes(), false)
	f.Add([]byte("a\r\nb\n"), true)
	f.Add([]byte{2, 0, 0, 0, 0, 0, 0, 3, 'a', '\n', 'b'}, false)
	f.Fuzz(func(t *testing.T, data []byte, tty bool) {
		n := 0
		err := demuxLogs(bytes.NewReader(data), tty, func(stream int, text []byte, truncated bool) {
			n++
			if stream != streamStdout && stream != streamStderr {
				t.Fatalf("stream %d", stream)
			}
			if len(text) > event.MaxLogLine {
				t.Fatalf("line of %d bytes", len(text))
			}
			if bytes.IndexByte(text, '\n') >= 0 {
				t.Fatal("newline inside a line")
			}
		})
		if err == nil {
			t.Fatal("a finite stream ends with an error (io.EOF at least)")
		}
		if n > len(data)+2 {
			t.Fatalf("%d lines from %d bytes", n, len(data))
		}
	})
}

func TestLogMonitorGivesUpOnAnUnreadableDriver(t *testing.T) {
	t.Parallel()
	l := newTestLogMonitor(10, time.Hour, 100, time.Now)
	l.docker = &fakeLogs{}
	err := l.Monitor(t.Context(), &source.Container{ID: "c1"}, func(*event.Event) {})
	require.ErrorContains(t, err, "logging driver does not support reading")
}
