package collector

import (
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/subject"
	"github.com/whalewatch/whalewatch/testkit/dockertest"
	"github.com/whalewatch/whalewatch/testkit/natstest"
)

// The resource, log, file and socket monitors against the real engine. The
// containers run with --network none; the socket test talks to itself over
// the container's own loopback. Each test's collector watches only that
// test's containers with its monitors (the engine may run many others).

func fast(t *testing.T) func(*Config) {
	return func(cfg *Config) {
		cfg.Resources.Interval = 300 * time.Millisecond
		cfg.Resources.FastInterval = 300 * time.Millisecond
		cfg.Logs.Enabled = true
		cfg.Logs.BatchInterval = 100 * time.Millisecond
		cfg.Files.Interval = 300 * time.Millisecond
		cfg.Sockets.Interval = 200 * time.Millisecond
		cfg.ProcessPollInterval = time.Hour // one docker top per container: the engine may run many
		cfg.MonitorLabel = dockertest.LabelTest + "=" + t.Name()
	}
}

func TestIntegrationResourceBusyLoop(t *testing.T) {
	t.Parallel()
	h := startCollector(t, fast(t))
	// Two busy loops: above 50% of a core even on a host loaded by other tests.
	id := dockertest.Run(t, []string{"--cpus", "1.5"}, "sh", "-c", "while :; do :; done & while :; do :; done")
	samples := map[string]float64{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("CPU samples seen: %v (a host loaded by others leaves the container less than half a core)", samples)
		}
	})
	var s stored
	// Longer than h.wait: the engine answers a one-shot stats request at its
	// next collection round over every container whose stats are asked,
	// which takes long when other tests load the engine.
	natstest.Eventually(t, 3*waitFor, func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, st := range h.got {
			if e := st.e; of(id, event.TelemetryResource)(e) {
				samples[e.Timestamp.Format(time.StampMilli)] = e.Whalewatch.Resource.CPUPercent
				if e.Whalewatch.Resource.CPUPercent > 50 {
					s = st
					return true
				}
			}
		}
		return false
	}, "no resource sample with CPU > 50%% stored")
	require.Equal(t, subject.Telemetry(h.host, id, event.TelemetryResource), s.subject)
	r := s.e.Whalewatch.Resource
	require.Greater(t, r.CPULimitPercent, r.CPUPercent/1.5-1, "of the 1.5-core limit")
	require.Positive(t, r.MemoryBytes)
	require.Zero(t, r.MemoryLimitBytes, "no memory limit")
	require.GreaterOrEqual(t, r.PIDs, int64(1))
	require.Positive(t, r.IntervalSeconds)
	if os.Geteuid() == 0 { // the host's cgroup and /proc files are readable: the default source
		require.Equal(t, map[string]float64{"cgroup": counts(t, h.reg, "whalewatch_collector_resource_samples_total")["cgroup"]}, counts(t, h.reg, "whalewatch_collector_resource_samples_total"),
			"every sample from cgroup files")
		require.Positive(t, counts(t, h.reg, "whalewatch_collector_resource_samples_total")["cgroup"])
	}
}

func TestIntegrationLogsBothStreams(t *testing.T) {
	t.Parallel()
	h := startCollector(t, fast(t))
	id := dockertest.Run(t, nil, "sh", "-c", "echo hello; echo err >&2; sleep 300")
	line := func(stream, text string) func(*event.Event) bool {
		return func(e *event.Event) bool {
			return e.Whalewatch.Log.Stream == stream && slices.Contains(e.Whalewatch.Log.Lines, text)
		}
	}
	out := h.wait(t, "stdout batch", and(of(id, event.TelemetryLog), line("stdout", "hello")))
	require.Equal(t, subject.Telemetry(h.host, id, event.TelemetryLog), out.subject)
	require.Equal(t, []string{"hello"}, out.e.Whalewatch.Log.Lines, "no timestamp prefix left")
	require.WithinDuration(t, time.Now(), out.e.Timestamp, time.Minute, "@timestamp is when it was logged")
	h.wait(t, "stderr batch", and(of(id, event.TelemetryLog), line("stderr", "err")))
}

// Logs of a json-file container are read from its file on disk, through
// rotations (max-size 1k: a rotation every ~15 lines), each line once and in
// order; the Engine API is not asked.
func TestIntegrationLogsFromFileThroughRotation(t *testing.T) {
	t.Parallel()
	const n = 150
	h := startCollector(t, fast(t), func(c *Config) { c.Logs.Source = "file" })
	// The container prints once the collector follows its file (then each
	// rotation must be followed as it happens).
	id := dockertest.Run(t, []string{"--log-opt", "max-size=1k", "--log-opt", "max-file=3"}, "sh", "-c",
		"while [ ! -e /tmp/go ]; do usleep 20000; done; i=0; while [ $i -lt 150 ]; do echo line-$i-padding-padding-padding-padding; i=$((i+1)); usleep 20000; done; sleep 300")
	natstest.Eventually(t, waitFor, func() bool {
		return counts(t, h.reg, "whalewatch_collector_log_readers_total")["file"] == 1
	}, "the collector does not follow the container's log file")
	dockertest.Docker(t, "exec", id, "touch", "/tmp/go")
	seen := func() []string {
		h.mu.Lock()
		defer h.mu.Unlock()
		var lines []string
		for _, s := range h.got {
			if s.e.Container != nil && s.e.Container.ID == id && s.e.Whalewatch.Log != nil {
				lines = append(lines, s.e.Whalewatch.Log.Lines...)
			}
		}
		return lines
	}
	natstest.Eventually(t, waitFor, func() bool { return len(seen()) >= n }, "lines: %v", lazyString(func() string {
		return fmt.Sprint(len(seen()))
	}))
	var want []string
	for i := range n {
		want = append(want, fmt.Sprintf("line-%d-padding-padding-padding-padding", i))
	}
	require.Equal(t, want, seen(), "every line once, in order")
	readers := counts(t, h.reg, "whalewatch_collector_log_readers_total")
	require.Equal(t, 1.0, readers["file"])
	require.Zero(t, readers["engine-api"], "the Engine API stream is not used")
}

func TestIntegrationFileDropper(t *testing.T) {
	t.Parallel()
	h := startCollector(t, fast(t))
	id := dockertest.Run(t, nil, "sleep", "300")
	dockertest.Docker(t, "exec", id, "sh", "-c", "echo x > /tmp/dropper; chmod +x /tmp/dropper")
	s := h.wait(t, "executable /tmp/dropper", and(of(id, event.TelemetryFile), func(e *event.Event) bool {
		return e.File.Path == "/tmp/dropper" && e.Whalewatch.FileChange.Executable
	}))
	require.Equal(t, subject.Telemetry(h.host, id, event.TelemetryFile), s.subject)
	require.Equal(t, "file", s.e.File.Type)
	require.Equal(t, int64(2), s.e.File.Size)
	require.Equal(t, "0755", s.e.File.Mode)
	require.Contains(t, []string{"added", "changed"}, s.e.Whalewatch.FileChange.Kind)
}

func TestIntegrationSocketsListenAndConnect(t *testing.T) {
	t.Parallel()
	h := startCollector(t, fast(t))
	id := dockertest.Run(t, nil, "sh", "-c", "sleep 60 | nc -l -p 4444") // stdin kept open: nc exits at its EOF
	state := func(st string, port int) func(*event.Event) bool {
		return func(e *event.Event) bool {
			if e.Whalewatch.Socket.State != st {
				return false
			}
			return (e.Destination != nil && e.Destination.Port == port) || (e.Destination == nil && e.Source.Port == port)
		}
	}
	l := h.wait(t, "listen on 4444", and(of(id, event.TelemetryNetwork), state("listen", 4444)))
	require.Equal(t, subject.Telemetry(h.host, id, event.TelemetryNetwork), l.subject)
	require.Equal(t, "tcp", l.e.Network.Transport)
	require.Equal(t, "ingress", l.e.Network.Direction)
	require.Contains(t, []string{"ipv4", "ipv6"}, l.e.Network.Type, "busybox nc listens on :: (dual stack)")

	dockertest.Docker(t, "exec", "-d", id, "sh", "-c", "sleep 60 | nc 127.0.0.1 4444") // loopback only
	c := h.wait(t, "connection to 4444", and(of(id, event.TelemetryNetwork), state("established", 4444)))
	require.Equal(t, "127.0.0.1", c.e.Destination.IP)
	require.Equal(t, "egress", c.e.Network.Direction)
}

// A container that floods its log is rate limited, and another container's
// lines still arrive.
func TestIntegrationNoisyLogsDoNotStarveOthers(t *testing.T) {
	t.Parallel()
	h := startCollector(t, fast(t), func(c *Config) { c.Logs.MaxLinesPerSecond = 200 })
	noisy := dockertest.Run(t, []string{"--log-opt", "max-size=5m", "--log-opt", "max-file=2"},
		"sh", "-c", "yes | head -n 200000; sleep 300")
	h.wait(t, "rate-limited batch of the noisy container", and(of(noisy, event.TelemetryLog), func(e *event.Event) bool {
		return e.Whalewatch.Log.Dropped > 0
	}))
	quiet := dockertest.Run(t, nil, "sh", "-c", "echo quiet-marker; sleep 300")
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, s := range h.got {
			if s.e.Container != nil && s.e.Container.ID == quiet {
				t.Logf("quiet: %s %s %s", s.e.Whalewatch.Telemetry, s.e.Event.Action, s.e.Message)
			}
		}
	})
	h.wait(t, "the quiet container's line", and(of(quiet, event.TelemetryLog), func(e *event.Event) bool {
		return slices.Contains(e.Whalewatch.Log.Lines, "quiet-marker")
	}))
	h.mu.Lock()
	defer h.mu.Unlock()
	published := 0
	for _, s := range h.got {
		if s.e.Container != nil && s.e.Container.ID == noisy && s.e.Whalewatch.Log != nil {
			published += len(s.e.Whalewatch.Log.Lines)
		}
	}
	require.Less(t, published, 200000, "most of the flood was dropped, not published")
}

// counts is a counter vector of reg by its (first) label's value.
func counts(t *testing.T, reg prometheus.Gatherer, name string) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			k := ""
			if l := m.GetLabel(); len(l) > 0 {
				k = l[0].GetValue()
			}
			got[k] = m.GetCounter().GetValue()
		}
	}
	return got
}
