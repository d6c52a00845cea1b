package collector

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/subject"
	"github.com/whalewatch/whalewatch/services/collector/internal/source/procconn"
	"github.com/whalewatch/whalewatch/testkit/dockertest"
	"github.com/whalewatch/whalewatch/testkit/natstest"
)

// requireProcConnector skips the test unless the process connector works
// here (root, the host's PID namespace). Under WHALEWATCH_REQUIRE_DOCKER=1 a
// root test that cannot open it fails instead.
func requireProcConnector(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the process connector needs root")
	}
	if err := procconn.Probe(); err != nil {
		if os.Getenv(dockertest.RequireEnv) == "1" {
			t.Fatalf("process connector unavailable as root and %s=1: %v", dockertest.RequireEnv, err)
		}
		t.Skipf("process connector unavailable: %v", err)
	}
}

func withProcConnector(c *Config) { c.ProcessSource = ModeProcConnector }

// fromConnector: the inventory's docker top may report the entrypoint too
// (a container started within inventoryMargin of the connector).
func fromConnector(e *event.Event) bool { return e.Whalewatch.Source == ModeProcConnector }

// Every process of a burst of short-lived ones (each lives 10 to 50 ms, as in
// bench/exec-capture, which also measures processes of under a millisecond,
// /bin/true, where the race with exit is occasionally lost) is published
// with its container, executable and command line.
//
// Not parallel: it measures a race with exit (reading /proc before a 10 ms
// process is gone), so it runs before the package's parallel tests rather
// than beside a dozen collectors and containers under -race (it failed twice
// that way, with one to three execs only partly attributed).
func TestIntegrationProcConnectorShortLivedExecs(t *testing.T) {
	requireProcConnector(t)
	h := startCollector(t, withProcConnector)
	require.Equal(t, ModeProcConnector, h.c.modes.process)
	id := dockertest.Run(t, []string{"--label", "app=burst"}, "sleep", "300")
	name := strings.TrimPrefix(dockertest.Docker(t, "inspect", "-f", "{{.Name}}", id), "/")

	// The entrypoint, exec'd by runc before the collector could inspect the
	// container: enriched once the container is in the cache.
	entry := h.wait(t, "entrypoint exec", and(of(id, event.TelemetryProcess), procName("sleep"), fromConnector))
	require.Equal(t, subject.Telemetry(h.host, id, event.TelemetryProcess), entry.subject)
	require.Equal(t, "sleep 300", entry.e.Process.CommandLine)
	require.Equal(t, "/bin/busybox", entry.e.Process.Executable)
	require.Equal(t, name, entry.e.Container.Name)
	require.Equal(t, "burst", entry.e.Container.Labels["app"])

	const n = 50
	for round := range 2 {
		// usleep 10 to 50 ms, each command line unique.
		script := fmt.Sprintf("for i in $(seq 1 %d); do /bin/usleep $(( 10000 + i * 800 + %d )); done", n, round)
		dockertest.Docker(t, "exec", id, "sh", "-c", script)
		shell := h.wait(t, "the exec'd shell", and(of(id, event.TelemetryProcess), func(e *event.Event) bool {
			return e.Process.CommandLine == "sh -c "+script
		}))
		require.Equal(t, "/bin/busybox", shell.e.Process.Executable)
		require.Equal(t, []string{"start"}, shell.e.Event.Type)

		want := map[string]bool{}
		for i := 1; i <= n; i++ {
			want[fmt.Sprintf("/bin/usleep %d", 10000+i*800+round)] = true
		}
		missing := func() []string {
			h.mu.Lock()
			defer h.mu.Unlock()
			left := map[string]bool{}
			for k := range want {
				left[k] = true
			}
			for _, s := range h.got {
				e := s.e
				if e.Container == nil || e.Container.ID != id || e.Process == nil || e.Whalewatch.Source != ModeProcConnector {
					continue
				}
				if left[e.Process.CommandLine] && e.Process.Executable == "/bin/busybox" && e.Process.Name == "usleep" &&
					e.Process.Parent != nil && e.Process.Parent.PID == shell.e.Process.PID {
					delete(left, e.Process.CommandLine)
				}
			}
			var out []string
			for k := range left {
				out = append(out, k)
			}
			return out
		}
		natstest.Eventually(t, waitFor, func() bool { return len(missing()) == 0 }, "short-lived execs not published with full attribution: %v",
			lazyString(func() string {
				m := missing()
				slices.Sort(m)
				return fmt.Sprintf("%d missing %v; attribution %v, lost %v", len(m), m[:min(len(m), 10)],
					counts(t, h.reg, "whalewatch_collector_exec_attribution_total"),
					counts(t, h.reg, "whalewatch_collector_proc_events_lost_total"))
			}))
	}
}

// lazyString formats as what f returns when it is formatted: a failure
// message that shows the state at the time of failure.
type lazyString func() string

func (l lazyString) String() string { return l() }
