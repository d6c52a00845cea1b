package dockertop

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/services/collector/internal/source"
)

// topTitles are the titles of an answer to topArgs, as engine 20.10 gives them.
var topTitles = []string{"PID", "PPID", "UID", "ELAPSED", "COMMAND"}

func TestParseTop(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		resp    container.TopResponse
		want    []topProcess
		wantErr error
	}{
		{
			name: "topArgs answer",
			resp: container.TopResponse{Titles: topTitles, Processes: [][]string{
				{"9841", "9814", "0", "12", "sleep 60"},
				{"9906", "9814", "1000", "0", "nc -l -p 4444"},
			}},
			want: []topProcess{
				{PID: 9841, PPID: 9814, User: "0", Elapsed: 12 * time.Second, Command: "sleep 60"},
				{PID: 9906, PPID: 9814, User: "1000", Elapsed: 0, Command: "nc -l -p 4444"},
			},
		},
		{
			name: "engine default -ef answer",
			resp: container.TopResponse{
				Titles:    []string{"UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"},
				Processes: [][]string{{"root", "12534", "12512", "0", "10:02", "?", "00:00:00", "sleep 60"}},
			},
			want: []topProcess{{PID: 12534, PPID: 12512, User: "root", Elapsed: -1, Command: "sleep 60"}},
		},
		{
			name: "etime format",
			resp: container.TopResponse{Titles: topTitles, Processes: [][]string{{"1", "0", "0", "1-02:03:04", "init"}}},
			want: []topProcess{{PID: 1, User: "0", Elapsed: 26*time.Hour + 3*time.Minute + 4*time.Second, Command: "init"}},
		},
		{
			name: "overflowing last column is joined",
			resp: container.TopResponse{Titles: topTitles, Processes: [][]string{{"7", "1", "0", "3", "sh", "-c", "sleep 1; true"}}},
			want: []topProcess{{PID: 7, PPID: 1, User: "0", Elapsed: 3 * time.Second, Command: "sh -c sleep 1; true"}},
		},
		{
			name: "bad rows are skipped, short rows kept",
			resp: container.TopResponse{Titles: topTitles, Processes: [][]string{
				{},
				{"x", "1", "0", "0", "bogus pid"},
				{"-5", "1", "0", "0", "negative pid"},
				{"0", "1", "0", "0", "zero pid"},
				{"99999999999999999999", "1", "0", "0", "overflowing pid"},
				{"42"},
				{"43", "nope", "0", "-1", "[kworker/0:1]"},
			}},
			want: []topProcess{
				{PID: 42, Elapsed: -1},
				{PID: 43, User: "0", Elapsed: -1, Command: "[kworker/0:1]"},
			},
		},
		{
			name:    "no PID column",
			resp:    container.TopResponse{Titles: []string{"COMMAND"}, Processes: [][]string{{"sh"}}},
			wantErr: errNoPIDColumn,
		},
		{
			name: "empty",
			resp: container.TopResponse{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := parseTop(tt.resp)
			if tt.wantErr != nil {
				require.ErrorIs(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			if len(tt.want) == 0 {
				require.Empty(t, got)
				return
			}
			require.Equal(t, tt.want, got)
		})
	}
}

func TestParseElapsed(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"0", 0, true},
		{" 65 ", 65 * time.Second, true},
		{"01:05", 65 * time.Second, true},
		{"02:00:01", 2*time.Hour + time.Second, true},
		{"3-00:00:00", 72 * time.Hour, true},
		{"", 0, false},
		{"-1", 0, false},
		{"1:60", 0, false},
		{"1:2:3:4", 0, false},
		{"x-01:00", 0, false},
		{"99999999999999999999", 0, false},
	}
	for _, tt := range tests {
		got, ok := parseElapsed(tt.in)
		require.Equal(t, tt.ok, ok, "parseElapsed(%q)", tt.in)
		if ok {
			require.Equal(t, tt.want, got, "parseElapsed(%q)", tt.in)
		}
	}
}

func TestProcessEvent(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 5, 11, 10, 0, 0, 500, time.UTC)
	p := topProcess{PID: 9906, PPID: 9814, User: "1000", Elapsed: 2 * time.Second, Command: "/bin/busybox nc -l -p 4444"}
	e := processEvent("h1", "c1", p, true, now)
	require.Equal(t, &event.Process{
		PID:         9906,
		Name:        "busybox",
		CommandLine: "/bin/busybox nc -l -p 4444",
		Args:        []string{"/bin/busybox", "nc", "-l", "-p", "4444"},
		ArgsCount:   5,
		Start:       time.Date(2026, 5, 11, 9, 59, 58, 0, time.UTC),
		Parent:      &event.Parent{PID: 9814},
		User:        &event.User{ID: "1000"},
	}, e.Process)
	require.Equal(t, []string{"start"}, e.Event.Type)
	require.Equal(t, event.TelemetryProcess, e.Whalewatch.Telemetry)
	require.Equal(t, source.ModeDockerTop, e.Whalewatch.Source)
	require.Equal(t, e.Event.ID, processEvent("h1", "c1", p, false, now.Add(time.Hour)).Event.ID, "id must not depend on when")
	require.NotEqual(t, e.Event.ID, processEvent("h1", "c2", p, true, now).Event.ID)
	require.NoError(t, e.Validate())

	named := processEvent("h1", "c1", topProcess{PID: 2, User: "www-data", Elapsed: -1, Command: "[nginx] <defunct>"}, false, now)
	require.Equal(t, "nginx", named.Process.Name)
	require.Equal(t, &event.User{Name: "www-data"}, named.Process.User)
	require.True(t, named.Process.Start.IsZero())
	require.Equal(t, []string{"info"}, named.Event.Type)
}

// FuzzParseTop feeds docker top answers built from arbitrary text (lines are
// rows, tabs separate cells, the first line is the titles). Whatever the
// container's processes look like, parsing must not panic, and every process
// event built from the result must be valid once bounded.
func FuzzParseTop(f *testing.F) {
	f.Add("PID\tPPID\tUID\tELAPSED\tCOMMAND\n1\t0\t0\t5\tsleep 60\n2\t1\t1000\t0\tnc -l -p 4444")
	f.Add("UID\tPID\tPPID\tC\tSTIME\tTTY\tTIME\tCMD\nroot\t1\t0\t0\t10:00\t?\t00:00:00\tsh")
	f.Add("PID\tCOMMAND\n3\t" + strings.Repeat("A ", 5000) + "\xff\xfe")
	f.Add("COMMAND\tPID\n[x]\t4\t\t\t")
	f.Add("PID\tELAPSED\n5\t1-99:99:99")
	f.Fuzz(func(t *testing.T, data string) {
		lines := strings.Split(data, "\n")
		resp := container.TopResponse{Titles: strings.Split(lines[0], "\t")}
		for _, l := range lines[1:] {
			resp.Processes = append(resp.Processes, strings.Split(l, "\t"))
		}
		procs, err := parseTop(resp)
		if err != nil {
			return
		}
		if len(procs) > len(resp.Processes) {
			t.Fatalf("%d processes from %d rows", len(procs), len(resp.Processes))
		}
		for _, p := range procs {
			if p.PID <= 0 {
				t.Fatalf("pid %d", p.PID)
			}
			e := processEvent("host", "c", p, true, time.Unix(1e9, 0))
			e.Container = &event.Container{ID: "c"}
			e.Bound()
			if err := e.Validate(); err != nil {
				t.Fatalf("event from %+v: %v", p, err)
			}
		}
	})
}

// fakeTop answers ContainerTop from a script, one answer per call, then
// repeats the last; it signals each call on calls.
type fakeTop struct {
	mu      sync.Mutex
	answers []container.TopResponse
	reject  bool // reject topArgs, as a ps without those columns would
	args    [][]string
	calls   chan struct{}
}

func (f *fakeTop) ContainerTop(ctx context.Context, id string, args []string) (container.TopResponse, error) {
	f.mu.Lock()
	defer func() {
		f.mu.Unlock()
		select {
		case f.calls <- struct{}{}:
		case <-ctx.Done():
		}
	}()
	f.args = append(f.args, args)
	if f.reject && args != nil {
		return container.TopResponse{}, errors.New("ps: unknown column")
	}
	a := f.answers[0]
	if len(f.answers) > 1 {
		f.answers = f.answers[1:]
	}
	return a, nil
}

func runPoller(t *testing.T, f *fakeTop, polls int) []*event.Event {
	t.Helper()
	p := New(f, "h", time.Millisecond, false, slog.New(slog.NewTextHandler(io.Discard, nil)),
		prometheus.NewCounter(prometheus.CounterOpts{Name: "errors"}))
	var mu sync.Mutex
	var got []*event.Event
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = p.Monitor(ctx, &source.Container{ID: "c1"}, func(e *event.Event) {
			mu.Lock()
			got = append(got, e)
			mu.Unlock()
		})
	}()
	for range polls {
		<-f.calls
	}
	// The event of the last answer is emitted after its call returns: wait
	// for the next call, which happens only once it was handled.
	<-f.calls
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	return got
}

func TestTopPollerReportsEachProcessOnce(t *testing.T) {
	t.Parallel()
	row := func(pid, cmd string) []string { return []string{pid, "1", "0", "0", cmd} }
	f := &fakeTop{calls: make(chan struct{}), answers: []container.TopResponse{
		{Titles: topTitles, Processes: [][]string{row("10", "sleep 60")}},
		{Titles: topTitles, Processes: [][]string{row("10", "sleep 60"), row("11", "sh -c nc -l")}},
		{Titles: topTitles, Processes: [][]string{row("10", "sleep 60"), row("11", "nc -l")}}, // exec in place
		{Titles: topTitles, Processes: [][]string{row("10", "sleep 60")}},                     // 11 exits
		{Titles: topTitles, Processes: [][]string{row("10", "sleep 60"), row("11", "nc -l")}}, // pid reused
	}}
	got := runPoller(t, f, 5)
	var seen []string
	for _, e := range got {
		seen = append(seen, e.Event.Type[0]+" "+e.Process.CommandLine)
	}
	require.Equal(t, []string{"info sleep 60", "start sh -c nc -l", "start nc -l", "start nc -l"}, seen)
	require.Equal(t, topArgs, f.args[0])
}

func TestTopPollerFallsBackToDefaultPSArgs(t *testing.T) {
	t.Parallel()
	f := &fakeTop{calls: make(chan struct{}), reject: true, answers: []container.TopResponse{{
		Titles:    []string{"UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"},
		Processes: [][]string{{"root", "5", "1", "0", "10:00", "?", "00:00:00", "nc -l -p 4444"}},
	}}}
	got := runPoller(t, f, 3)
	require.Len(t, got, 1)
	require.Equal(t, "nc", got[0].Process.Name)
	require.Equal(t, &event.User{Name: "root"}, got[0].Process.User)
	f.mu.Lock()
	defer f.mu.Unlock()
	require.Equal(t, [][]string{topArgs, nil, nil, nil}, f.args[:4], "falls back once, for good")
}

// benchTop is a docker top answer of 50 processes.
func benchTop() container.TopResponse {
	resp := container.TopResponse{Titles: topTitles}
	for i := range 50 {
		resp.Processes = append(resp.Processes, []string{strconv.Itoa(100 + i), "1", "0", "3", "/usr/bin/python3 -m http.server --bind 127.0.0.1 8000"})
	}
	return resp
}

// BenchmarkParseTopAndBuild parses one answer and builds and bounds its
// events; compare with BenchmarkBaselineMarshalTopEvents, the JSON encoding
// that publishing the same events costs anyway.
func BenchmarkParseTopAndBuild(b *testing.B) {
	resp := benchTop()
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		procs, _ := parseTop(resp)
		for _, p := range procs {
			e := processEvent("host", "c", p, true, now)
			e.Bound()
		}
	}
}

func BenchmarkBaselineMarshalTopEvents(b *testing.B) {
	procs, _ := parseTop(benchTop())
	now := time.Now()
	var evs []*event.Event
	for _, p := range procs {
		evs = append(evs, processEvent("host", "c", p, true, now))
	}
	b.ReportAllocs()
	for b.Loop() {
		for _, e := range evs {
			if _, err := event.Marshal(e); err != nil {
				b.Fatal(err)
			}
		}
	}
}
