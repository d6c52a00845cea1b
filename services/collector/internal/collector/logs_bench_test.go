package collector

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/subject"
	"github.com/whalewatch/whalewatch/testkit/dockertest"
	"github.com/whalewatch/whalewatch/testkit/natstest"
)

// benchLogsEnv gates TestLogLatencyBenchmark: it runs for about a minute.
const benchLogsEnv = "WHALEWATCH_BENCH_LOG_LATENCY"

// TestLogLatencyBenchmark measures log line → NATS latency of three
// collectors watching the same container in one run: the Engine API stream
// with main's former batching (1 s), the stream with this branch's default
// batching (50 ms), and the json-file log file (50 ms, the default source).
// The container prints a line every 20 ms; the latency of a batch is from
// its first line's engine timestamp (the line that waited longest) to its
// arrival at a core NATS subscription.
//
//	WHALEWATCH_BENCH_LOG_LATENCY=1 go test ./internal/collector -run TestLogLatencyBenchmark -v -timeout 10m
func TestLogLatencyBenchmark(t *testing.T) {
	if os.Getenv(benchLogsEnv) != "1" {
		t.Skipf("a benchmark of a minute: set %s=1", benchLogsEnv)
	}
	dockertest.BusyboxImage(t)
	s := natstest.Server(t)
	nc, js := natstest.Connect(t, s)
	require.NoError(t, bus.EnsureStreams(t.Context(), js, testConfig(t).NATS.Streams))
	label := "whalewatch.bench=logs-" + event.NewID()[:6]

	variants := []struct {
		name, source string
		batch        time.Duration
	}{
		{"engine-api, 1s batches (main)", "engine-api", time.Second},
		{"engine-api, 50ms batches", "engine-api", 50 * time.Millisecond},
		{"file, 50ms batches (default)", "file", 50 * time.Millisecond},
	}
	sinks := make([]*latencySink, len(variants))
	load0 := loadAvg()
	for i, v := range variants {
		host := fmt.Sprintf("bench-logs-%d-%s", i, event.NewID()[:6])
		sinks[i] = subscribeLogs(t, nc, host)
		startLogCollector(t, nc, host, label, v.source, v.batch)
	}
	const n = 1500
	id := dockertest.Run(t, []string{"--label", label}, "sh", "-c",
		fmt.Sprintf("sleep 2; i=0; while [ $i -lt %d ]; do echo bench-line-$i; i=$((i+1)); usleep 20000; done; sleep 300", n))
	natstest.Eventually(t, 3*time.Minute, func() bool {
		for _, s := range sinks {
			if s.lines() < n {
				return false
			}
		}
		return true
	}, "not every line arrived")
	for i, v := range variants {
		lat := sinks[i].latencies()
		slices.Sort(lat)
		q := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
		t.Logf("%-32s container %s: %d lines in %d batches; batch latency p50 %v p99 %v max %v (load %s → %s)",
			v.name, id[:12], sinks[i].lines(), len(lat), q(0.5).Round(time.Millisecond), q(0.99).Round(time.Millisecond),
			q(1).Round(time.Millisecond), load0, loadAvg())
	}
}

type latencySink struct {
	mu  sync.Mutex
	n   int
	lat []time.Duration
}

func (s *latencySink) lines() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

func (s *latencySink) latencies() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.lat)
}

func subscribeLogs(t *testing.T, nc *nats.Conn, host string) *latencySink {
	t.Helper()
	s := &latencySink{}
	sub, err := nc.Subscribe(subject.TelemetryPrefix+"."+host+".*."+string(event.TelemetryLog), func(m *nats.Msg) {
		at := time.Now()
		e, err := event.Decode(m.Data)
		if err != nil || e.Whalewatch.Log == nil || len(e.Whalewatch.Log.Lines) == 0 {
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		s.n += len(e.Whalewatch.Log.Lines)
		s.lat = append(s.lat, at.Sub(e.Timestamp))
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return s
}

func startLogCollector(t *testing.T, nc *nats.Conn, host, label, src string, batch time.Duration) {
	t.Helper()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	cfg := testConfig(t)
	cfg.HostName = host
	cfg.ProcessSource = ModeDockerTop
	cfg.ProcessPollInterval = time.Hour
	cfg.MonitorLabel = label
	cfg.Logs.Enabled, cfg.Logs.Source, cfg.Logs.BatchInterval = true, src, batch
	dc, err := NewDockerClient("")
	require.NoError(t, err)
	t.Cleanup(func() { _ = dc.Close() })
	c, err := New(dc, js, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; _ = c.Close() })
	select {
	case <-c.synced:
	case <-time.After(waitFor):
		t.Fatal("collector did not start")
	}
}
