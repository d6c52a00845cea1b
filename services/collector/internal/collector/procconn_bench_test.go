package collector

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/subject"
	"github.com/whalewatch/whalewatch/testkit/dockertest"
	"github.com/whalewatch/whalewatch/testkit/natstest"
)

// benchExecEnv gates TestExecCaptureBenchmark: it runs for a minute or more.
const benchExecEnv = "WHALEWATCH_BENCH_EXEC_CAPTURE"

// execSink records the process telemetry of one collector as it reaches
// NATS (a core subscription sees each publish when the server gets it).
type execSink struct {
	mu   sync.Mutex
	recv map[string]time.Time // command line → first arrival
	evs  map[string]*event.Event
}

func subscribeExecs(t *testing.T, nc *nats.Conn, host, ctr string) *execSink {
	t.Helper()
	s := &execSink{recv: map[string]time.Time{}, evs: map[string]*event.Event{}}
	sub, err := nc.Subscribe(subject.Telemetry(host, ctr, event.TelemetryProcess), func(m *nats.Msg) {
		at := time.Now()
		e, err := event.Decode(m.Data)
		if err != nil || e.Process == nil {
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if _, ok := s.recv[e.Process.CommandLine]; !ok {
			s.recv[e.Process.CommandLine], s.evs[e.Process.CommandLine] = at, e
		}
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return s
}

func startBenchCollector(t *testing.T, nc *nats.Conn, host, mode string) *prometheus.Registry {
	t.Helper()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	cfg := testConfig(t)
	cfg.HostName = host
	cfg.ProcessSource = mode
	cfg.ProcessPollInterval = 500 * time.Millisecond
	dc, err := NewDockerClient("")
	require.NoError(t, err)
	t.Cleanup(func() { _ = dc.Close() })
	reg := prometheus.NewRegistry()
	c, err := New(dc, js, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), reg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-c.synced:
	case <-time.After(waitFor):
		t.Fatal("collector did not start")
	}
	return reg
}

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// TestExecCaptureBenchmark measures issue 3's short-lived exec capture: 1,000
// processes in a container, each living 10 to 50 ms, run one after another by
// one docker exec; how many each process source publishes with full
// attribution (container, executable, command line), and the latency from
// the exec (kernel timestamp) to the event reaching NATS. The docker-top
// poller (500 ms) runs in the same process at the same time as the baseline.
// A second phase runs 1,000 processes of under a millisecond (/bin/true). A
// third collector with the kernel sensor (-process-source ebpf) runs beside
// them and is counted the same way as the connector.
//
//	WHALEWATCH_BENCH_EXEC_CAPTURE=1 go test ./internal/collector -run TestExecCaptureBenchmark -v -timeout 10m
func TestExecCaptureBenchmark(t *testing.T) {
	if os.Getenv(benchExecEnv) != "1" {
		t.Skipf("a benchmark of a minute or more: set %s=1", benchExecEnv)
	}
	requireProcConnector(t)
	dockertest.BusyboxImage(t)
	s := natstest.Server(t)
	nc, js := natstest.Connect(t, s)
	require.NoError(t, bus.EnsureStreams(t.Context(), js, testConfig(t).NATS.Streams))

	hostConn, hostTop, hostSensor := "bench-conn-"+event.NewID()[:6], "bench-top-"+event.NewID()[:6], "bench-ebpf-"+event.NewID()[:6]
	conn := startBenchCollector(t, nc, hostConn, ModeProcConnector)
	startBenchCollector(t, nc, hostTop, ModeDockerTop)
	startBenchCollector(t, nc, hostSensor, ModeEBPF) // the kernel sensor, the default where it loads
	id := dockertest.Run(t, nil, "sleep", "3600")
	pc := conn

	for _, phase := range []struct {
		name   string
		n      int
		want   func(i int) string // the command line of process i
		script string
	}{
		{name: "10-50ms", n: 1000, script: "for i in $(seq 1 1000); do /bin/usleep $(( 10000 + i * 40 )); done",
			want: func(i int) string { return fmt.Sprintf("/bin/usleep %d", 10000+i*40) }},
		{name: "sub-ms /bin/true", n: 1000, script: "for i in $(seq 1 1000); do /bin/true $i; done",
			want: func(i int) string { return fmt.Sprintf("/bin/true %d", i) }},
	} {
		sinkConn := subscribeExecs(t, nc, hostConn, id)
		sinkTop := subscribeExecs(t, nc, hostTop, id)
		sinkSensor := subscribeExecs(t, nc, hostSensor, id)
		load0 := loadAvg()
		full0, partial0 := attrCount(pc, "full"), attrCount(pc, "partial")
		began := time.Now()
		dockertest.Docker(t, "exec", id, "sh", "-c", phase.script)
		took := time.Since(began)
		// Wait until the connector's events stop arriving (2 s of quiet).
		quiet := func(s *execSink) int { s.mu.Lock(); defer s.mu.Unlock(); return len(s.recv) }
		last, lastChange := -1, time.Now()
		natstest.Eventually(t, time.Minute, func() bool {
			if n := quiet(sinkConn); n != last {
				last, lastChange = n, time.Now()
			}
			return time.Since(lastChange) > 2*time.Second
		}, "events still arriving")
		natstest.Eventually(t, time.Minute, func() bool {
			if n := quiet(sinkSensor); n != last {
				last, lastChange = n, time.Now()
			}
			return time.Since(lastChange) > 2*time.Second
		}, "sensor events still arriving")

		count := func(s *execSink, full bool) (n int, lat []time.Duration) {
			s.mu.Lock()
			defer s.mu.Unlock()
			for i := 1; i <= phase.n; i++ {
				cl := phase.want(i)
				at, ok := s.recv[cl]
				if !ok {
					continue
				}
				e := s.evs[cl]
				if full && (e.Container == nil || e.Container.ID != id || e.Process.Executable == "") {
					continue
				}
				n++
				lat = append(lat, at.Sub(e.Timestamp))
			}
			return n, lat
		}
		nConn, lat := count(sinkConn, true)
		nTop, _ := count(sinkTop, false)
		nSensor, latSensor := count(sinkSensor, true)
		slices.Sort(lat)
		slices.Sort(latSensor)
		quantile := func(lat []time.Duration, p float64) time.Duration {
			if len(lat) == 0 {
				return 0
			}
			return lat[min(len(lat)-1, int(p*float64(len(lat))))]
		}
		q := func(p float64) time.Duration { return quantile(lat, p) }
		t.Logf("%s: kernel sensor published %d with full attribution (%.1f%%); exec→NATS latency p50 %v p99 %v max %v",
			phase.name, nSensor, 100*float64(nSensor)/float64(phase.n), quantile(latSensor, 0.5), quantile(latSensor, 0.99), quantile(latSensor, 1))
		sinkTop.mu.Lock()
		topAll := len(sinkTop.recv)
		sinkTop.mu.Unlock()
		t.Logf("%s: %d processes in %v (load %s → %s): proc-connector published %d with full attribution (%.1f%%; attribution full +%.0f partial +%.0f), docker-top@500ms %d (%.1f%%; %d process events in all); exec→NATS latency p50 %v p99 %v max %v; exec→queue (all phases so far) %s",
			phase.name, phase.n, took.Round(time.Millisecond), load0, loadAvg(),
			nConn, 100*float64(nConn)/float64(phase.n), attrCount(pc, "full")-full0, attrCount(pc, "partial")-partial0,
			nTop, 100*float64(nTop)/float64(phase.n), topAll, q(0.5), q(0.99), q(1), histogramShares(t, pc))
	}
}

// attrCount is whalewatch_collector_exec_attribution_total{result}.
func attrCount(reg *prometheus.Registry, result string) float64 {
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "whalewatch_collector_exec_attribution_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// histogramShares formats the share of exec→queue latencies
// (whalewatch_collector_exec_queue_latency_seconds) under a few bounds.
func histogramShares(t *testing.T, reg *prometheus.Registry) string {
	var m *dto.Metric
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == "whalewatch_collector_exec_queue_latency_seconds" {
			m = mf.GetMetric()[0]
		}
	}
	require.NotNil(t, m)
	total := float64(m.GetHistogram().GetSampleCount())
	var parts []string
	for _, b := range m.GetHistogram().GetBucket() {
		switch b.GetUpperBound() {
		case .001, .005, .05:
			parts = append(parts, fmt.Sprintf("≤%v %.1f%%", time.Duration(b.GetUpperBound()*float64(time.Second)), 100*float64(b.GetCumulativeCount())/total))
		}
	}
	return strings.Join(parts, ", ")
}
