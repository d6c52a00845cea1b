package e2e

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/testkit/dockertest"
	"github.com/whalewatch/whalewatch/testkit/natstest"
)

// behaviourCollector makes the collector look often, so that the tests
// below take seconds: resources every 2 s (the adaptive sampling of a busy
// container does the same in production), docker diff every 2 s, sockets
// every second. Unknown variables are ignored, so renamed flags only slow
// the tests down.
var behaviourCollector = map[string]string{
	"RESOURCE_INTERVAL": "2s",
	"DIFF_INTERVAL":     "2s",
	"SOCKET_INTERVAL":   "1s",
}

// TestBehaviour runs one attack per capability of issue 11 on real
// containers (network none, loopback only) against one stack, and checks the
// threat each raises, its severity, incident and evidence.
func TestBehaviour(t *testing.T) {
	st := StartStackWith(t, StackOptions{Collector: behaviourCollector})
	name := func(s string) string { return "ww-e2e-" + s + "-" + st.Host }

	t.Run("docker exec sh -c, not the health check", func(t *testing.T) {
		t.Parallel()
		// A web server whose health check runs wget through sh -c, every second.
		id := dockertest.Run(t, []string{"--name", name("hc"), "--health-cmd", "wget -q -O /dev/null http://127.0.0.1:8080/passwd || exit 1",
			"--health-interval", "1s"}, "httpd", "-f", "-p", "8080", "-h", "/etc")
		// The health check ran, wget included, and reached the detector first.
		st.WaitTelemetry(t, 60*time.Second, "health check exec", func(e *event.Event) bool {
			return onContainer(e, id) && e.Whalewatch.Telemetry == event.TelemetryLifecycle && e.Event.Action == "exec_start" &&
				e.Process != nil && strings.Contains(e.Process.CommandLine, "127.0.0.1:8080")
		})
		st.WaitTelemetry(t, 60*time.Second, "the health check's wget", func(e *event.Event) bool {
			return onContainer(e, id) && e.Whalewatch.Telemetry == event.TelemetryProcess && e.Process != nil &&
				strings.HasPrefix(e.Process.CommandLine, "wget ")
		})
		start := time.Now()
		dockertest.Docker(t, "exec", id, "sh", "-c", "id")
		th, at := st.WaitThreat(t, id, "shell-command-in-docker-exec", 30*time.Second)
		t.Logf("docker exec sh -c -> threat: %v", at.Sub(start))
		require.Equal(t, event.SeverityMedium, th.Whalewatch.Severity)
		require.Equal(t, "sh -c id", th.Process.CommandLine)
		for _, th := range st.ThreatsOf(id, "") {
			require.NotContains(t, th.Message, "127.0.0.1:8080", "the health check raised %s", th.Rule.ID)
		}
	})

	t.Run("bind shell with nc -e sh -i", func(t *testing.T) {
		t.Parallel()
		id := dockertest.Run(t, []string{"--name", name("bind")}, "sleep", "3600")
		start := time.Now()
		dockertest.Docker(t, "exec", "-d", id, "nc", "-l", "-p", "5555", "-e", "sh", "-i")
		th, at := st.WaitThreat(t, id, "netcat-shell", 30*time.Second)
		t.Logf("nc -l -e sh -> threat: %v", at.Sub(start))
		require.Equal(t, event.SeverityCritical, th.Whalewatch.Severity)
		// Someone connects and runs a command: the shell runs with its
		// standard streams on the socket.
		natstest.Eventually(t, 20*time.Second, func() bool {
			out, _ := dockertest.Try("exec", id, "sh", "-c", "echo 'echo pwn''ed; exit' | timeout 3 nc 127.0.0.1 5555")
			return strings.Contains(out, "pwned")
		}, "the bind shell did not answer")
		shell := st.WaitTelemetry(t, 30*time.Second, "the served shell's exec", func(e *event.Event) bool {
			return onContainer(e, id) && e.Whalewatch.Telemetry == event.TelemetryProcess && e.Process != nil &&
				e.Process.CommandLine == "sh -i"
		})
		if shell.Whalewatch.Stdio == nil {
			t.Log("the collector reports no stdio (kernel sensor not merged): shell-with-network-stdio not exercised end to end here")
			return
		}
		th, _ = st.WaitThreat(t, id, "shell-with-network-stdio", 30*time.Second)
		require.Equal(t, event.SeverityCritical, th.Whalewatch.Severity)
		require.Equal(t, th.Whalewatch.Incident.ID, st.ThreatsOf(id, "netcat-shell")[0].Whalewatch.Incident.ID, "one incident")
	})

	t.Run("write to /etc/passwd", func(t *testing.T) {
		t.Parallel()
		id := dockertest.Run(t, []string{"--name", name("passwd")}, "sleep", "3600")
		start := time.Now()
		dockertest.Docker(t, "exec", id, "sh", "-c", "echo 'toor:x:0:0::/root:/bin/sh' >> /etc/passwd")
		th, at := st.WaitThreat(t, id, "write-account-files", 30*time.Second)
		t.Logf("write to /etc/passwd -> threat: %v", at.Sub(start))
		require.Equal(t, event.SeverityHigh, th.Whalewatch.Severity)
		require.Equal(t, "/etc/passwd", th.File.Path)
		// One incident with the docker exec that wrote it, and the evidence.
		require.NotNil(t, th.Whalewatch.Incident)
		require.Contains(t, th.Whalewatch.Incident.Rules, "shell-command-in-docker-exec")
		require.GreaterOrEqual(t, th.Whalewatch.Incident.Count, 2)
		require.NotNil(t, th.Whalewatch.Evidence)
		require.True(t, containsSubstring(th.Whalewatch.Evidence.FileChanges, "/etc/passwd"), "%v", th.Whalewatch.Evidence.FileChanges)
		require.True(t, containsSubstring(th.Whalewatch.Evidence.Processes, "toor:x:0:0"), "%v", th.Whalewatch.Evidence.Processes)
	})

	t.Run("loopback port scan of 20 ports is one threat", func(t *testing.T) {
		t.Parallel()
		id := dockertest.Run(t, []string{"--name", name("scan")}, "sleep", "3600")
		// Twenty listeners, then a client to each, both ends holding the
		// connection (stdin a pipe that stays open): the socket tables (the
		// collector's source until the kernel sensor) show established
		// connections only, and only those alive when they are read.
		script := "for p in $(seq 7001 7020); do sleep 600 | nc -l -p $p >/dev/null & done; sleep 1; " +
			"for p in $(seq 7001 7020); do sleep 600 | nc 127.0.0.1 $p & done; wait"
		start := time.Now()
		dockertest.Docker(t, "exec", "-d", id, "sh", "-c", script)
		th, at := st.WaitThreat(t, id, "port-scan-connection-fanout", 60*time.Second)
		t.Logf("scan -> threat: %v", at.Sub(start))
		require.Equal(t, event.SeverityHigh, th.Whalewatch.Severity)
		// Every connection reached the detector; then a sentinel exec, which
		// the detector handles after them: by its threat, any second scan
		// threat would be out.
		natstest.Eventually(t, 30*time.Second, func() bool {
			ports := map[int]bool{}
			for _, e := range st.Telemetry(func(e *event.Event) bool { return onContainer(e, id) && isEgress(e) }) {
				if p := e.Destination.Port; p >= 7001 && p <= 7020 {
					ports[p] = true
				}
			}
			return len(ports) == 20
		}, "not all 20 connections seen")
		_, _ = dockertest.Try("exec", id, "wget", "-q", "-T", "1", "-O", "/dev/null", "http://127.0.0.1:9/")
		st.WaitThreat(t, id, "suspicious-tool-downloader", 30*time.Second)
		require.Len(t, st.ThreatsOf(id, "port-scan-connection-fanout"), 1, "one scan, one threat")
		require.Len(t, st.ThreatsOf(id, "suspicious-tool-netcat"), 1, "forty nc execs, one threat")
		last := st.ThreatsOf(id, "suspicious-tool-downloader")[0]
		require.Equal(t, th.Whalewatch.Incident.ID, last.Whalewatch.Incident.ID, "one incident")
		require.Greater(t, last.Whalewatch.Incident.Count, 20, "the folded probes and execs are counted")
	})

	t.Run("busy loop from /tmp burning its CPU", func(t *testing.T) {
		t.Parallel()
		// Held to 5 % of a core, which even a loaded test machine gives it:
		// a miner under a CPU limit burns all of its limit, and that is what
		// the detector measures (cpu_limit_percent).
		id := dockertest.Run(t, []string{"--name", name("cpu"), "--cpus", "0.05"}, "sleep", "3600")
		start := time.Now()
		dockertest.Docker(t, "exec", "-d", id, "sh", "-c", "cp /bin/busybox /tmp/sh && exec /tmp/sh -c 'while :; do :; done'")
		// A shared, loaded machine may not give the loop a core: say so
		// rather than fail.
		var peak float64
		natstest.Eventually(t, 30*time.Second, func() bool {
			busy := st.Telemetry(func(e *event.Event) bool {
				return onContainer(e, id) && e.Whalewatch.Resource != nil && e.Whalewatch.Resource.CPULimitPercent > 10
			})
			for _, e := range busy {
				peak = max(peak, e.Whalewatch.Resource.CPULimitPercent)
			}
			return len(busy) >= 5
		}, "no busy resource samples")
		if peak < 85 {
			t.Skipf("the machine gives the busy loop at most %.0f%% of its limit, below the detector's threshold (load: %s)", peak, loadAverage())
		}
		th, at := st.WaitThreat(t, id, "sustained-high-cpu-suspicious-process", 120*time.Second)
		t.Logf("busy loop -> threat: %v", at.Sub(start))
		require.Equal(t, event.SeverityHigh, th.Whalewatch.Severity)
		require.Less(t, at.Sub(start), 75*time.Second)
	})
}

func onContainer(e *event.Event, id string) bool { return e.Container != nil && e.Container.ID == id }

func isEgress(e *event.Event) bool {
	return e.Whalewatch.Telemetry == event.TelemetryNetwork && e.Network != nil && e.Network.Direction == "egress" &&
		e.Destination != nil && e.Whalewatch.Socket != nil &&
		(e.Whalewatch.Socket.State == "established" || e.Whalewatch.Socket.State == "connect" || e.Whalewatch.Socket.State == "syn_sent")
}

func containsSubstring(list []string, sub string) bool {
	for _, s := range list {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// loadAverage is /proc/loadavg's first three fields, for messages.
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
