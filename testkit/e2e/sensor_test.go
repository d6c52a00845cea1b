package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/testkit/dockertest"
)

// TestKernelSensorAttemptsBecomeThreats makes, in real containers, the
// attempts only the collector's kernel sensor can see: bare system calls
// from a static program copied into the container (the sensor's load
// generator, "loadgen attempt NAME"), so that no tool name in an exec gives
// them away. Each must become its rule's threat through the whole system
// (collector with the sensor, NATS, detector), the threat naming the path or
// the call; refused attempts count. A benign container doing ordinary reads
// and writes raises nothing.
func TestKernelSensorAttemptsBecomeThreats(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the kernel sensor needs root")
	}
	st := StartStack(t, false)
	lg := attemptLoadgen(t)
	name := func(s string) string { return "ww-e2e-sensor-" + s + "-" + st.Host }

	// The benign container reads and writes as a service does, from its own
	// command (a docker exec of sh -c is a threat of its own), the sensor
	// reporting some of it: its own environment read from /proc, its own
	// files written and truncated.
	benign := dockertest.Run(t, []string{"--name", name("benign")}, "sh", "-c",
		"mkdir -p /var/lib/app; while :; do read h < /etc/hostname; read p < /etc/passwd; read e < /proc/self/environ; "+
			"echo $h >> /var/lib/app/data; cp /var/lib/app/data /tmp/copy; : > /tmp/copy; echo ok > /tmp/status; sleep 1; done")

	type want struct {
		attempt, rule string
		severity      event.Severity
		path, call    string // the path (file telemetry) or the system call the threat carries
		names         string // the threat's message names it, or one of its |-separated alternatives (path or call when empty)
		outcome       string // "success", or "failure" and the errno; "" when the kernel's verdict may vary
	}
	groups := []struct {
		name  string
		user  string
		wants []want
	}{
		{"creds", "", []want{
			{"read-shadow", "read-sensitive-file-untrusted", event.SeverityHigh, "/etc/shadow", "", "", "success"},
			{"read-environ", "read-process-environ", event.SeverityMedium, "/proc/1/environ", "", "", "success"},
			{"link-shadow", "hardlink-over-sensitive-file", event.SeverityHigh, "/etc/shadow", "", "", ""},
			{"symlink-shadow", "symlink-over-sensitive-file", event.SeverityHigh, "/etc/shadow", "", "", ""},
		}},
		{"user", "1000:1000", []want{
			{"read-shadow", "read-sensitive-file-untrusted", event.SeverityHigh, "/etc/shadow", "", "", "failure EACCES"},
			{"setuid", "setuid-by-unprivileged", event.SeverityHigh, "", "setuid", "", "failure EPERM"},
		}},
		{"evasion", "", []want{
			{"truncate-log", "clear-log-files", event.SeverityHigh, "/var/log/app/access.log", "", "", "success"},
			{"truncate-history", "shell-history-tampered", event.SeverityHigh, "/root/.ash_history", "", "", "success"},
		}},
		{"escape", "", []want{
			{"kill-init", "kill-container-init", event.SeverityMedium, "", "kill", "pid1", ""},
			{"mount", "mount-in-container", event.SeverityHigh, "", "mount", "", "failure EPERM"},
			{"unshare", "namespace-unshare", event.SeverityHigh, "", "unshare", "", "failure EPERM"},
			{"ptrace", "ptrace-attach", event.SeverityHigh, "", "ptrace", "", ""},
			// Raised by the exec from the memfd or by the execveat call,
			// whichever reaches the detector first.
			{"fileless", "fileless-execution", event.SeverityCritical, "", "", "/memfd:|execveat", ""},
		}},
	}
	// The files the attempts aim at and the generator, put in place before
	// the containers start (docker cp is the engine's doing, not theirs).
	seed := t.TempDir()
	for _, f := range []struct {
		path string
		mode os.FileMode
	}{{"etc/shadow", 0o640}, {"var/log/app/access.log", 0o644}, {"root/.ash_history", 0o600}, {"bin/loadgen", 0o755}} {
		p := filepath.Join(seed, f.path)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		data := []byte("root:*:20000:0:99999:7:::\n")
		if f.path == "bin/loadgen" {
			var err error
			data, err = os.ReadFile(lg)
			require.NoError(t, err)
		}
		require.NoError(t, os.WriteFile(p, data, f.mode))
	}
	// t.TempDir is 0700; docker cp gives / the mode of the copied directory.
	require.NoError(t, filepath.WalkDir(seed, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			err = os.Chmod(p, 0o755)
		}
		return err
	}))
	t.Run("attempts", func(t *testing.T) {
		for _, g := range groups {
			t.Run(g.name, func(t *testing.T) {
				t.Parallel()
				id := dockertest.Create(t, []string{"--name", name(g.name)}, "sleep", "3600")
				dockertest.Docker(t, "cp", "-a", seed+"/.", id+":/")
				dockertest.Docker(t, "start", id)
				args := []string{"exec"}
				if g.user != "" {
					args = append(args, "--user", g.user)
				}
				args = append(args, id, "loadgen", "attempt")
				for _, w := range g.wants {
					args = append(args, w.attempt)
				}
				start := time.Now()
				out := dockertest.Docker(t, args...)
				t.Logf("%s", strings.TrimSpace(out))
				for _, w := range g.wants {
					t.Run(w.attempt, func(t *testing.T) {
						t.Cleanup(func() {
							if t.Failed() {
								dumpSensorTelemetry(t, st, id)
							}
						})
						th, at := st.WaitThreat(t, id, w.rule, 30*time.Second)
						t.Logf("%s -> %s: %v: %s", w.attempt, w.rule, at.Sub(start), th.Message)
						require.Equal(t, w.severity, th.Whalewatch.Severity, w.rule)
						if w.path != "" {
							require.NotNil(t, th.File, w.rule)
							require.Contains(t, th.File.Path+" "+th.File.TargetPath, w.path, w.rule)
						}
						if w.call != "" {
							require.NotNil(t, th.Whalewatch.Syscall, w.rule)
							require.Equal(t, w.call, th.Whalewatch.Syscall.Name, w.rule)
						}
						named := strings.Split(firstNonEmpty(w.names, w.path, w.call), "|")
						require.True(t, slices.ContainsFunc(named, func(n string) bool { return strings.Contains(th.Message, n) }),
							"%s: %q names none of %q", w.rule, th.Message, named)
						// The kernel's verdict is on the telemetry that raised it.
						trigger := st.WaitTelemetry(t, 10*time.Second, "trigger of "+w.rule, func(e *event.Event) bool {
							return e.Event.ID == th.Whalewatch.Trigger
						})
						require.Equal(t, "ebpf", trigger.Whalewatch.Source, w.rule)
						if w.attempt == "fileless" {
							// The call itself is on NATS too (it raises the rule as well).
							st.WaitTelemetry(t, 10*time.Second, "execveat(AT_EMPTY_PATH)", func(e *event.Event) bool {
								sc := e.Whalewatch.Syscall
								return onContainer(e, id) && sc != nil && sc.Name == "execveat" && slices.Contains(sc.Args, "AT_EMPTY_PATH")
							})
						}
						if w.outcome != "" {
							got := trigger.Event.Outcome
							if sc := trigger.Whalewatch.Syscall; sc != nil && sc.Errno != "" {
								got += " " + sc.Errno
							}
							require.Equal(t, w.outcome, got, w.rule)
						}
					})
				}
			})
		}
	})
	t.Run("benign", func(t *testing.T) {
		// After every attack's threat: the benign container's reads and
		// writes are on NATS, and the detector, working in stream order,
		// would have raised their threats by the time a later attack's was out.
		st.WaitTelemetry(t, 30*time.Second, "benign container's write", func(e *event.Event) bool {
			return onContainer(e, benign) && e.File != nil && e.File.Path == "/tmp/status"
		})
		probe := dockertest.Run(t, []string{"--name", name("sentinel")}, "sleep", "3600")
		dockertest.Docker(t, "cp", lg, probe+":/bin/loadgen")
		dockertest.Docker(t, "exec", probe, "loadgen", "attempt", "mount")
		st.WaitThreat(t, probe, "mount-in-container", 30*time.Second)
		for _, th := range st.ThreatsOf(benign, "") {
			t.Errorf("threat for the benign container: %s: %s", th.Rule.ID, th.Message)
		}
	})
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

var (
	loadgenOnce sync.Once
	loadgenPath string
	loadgenErr  error
)

// attemptLoadgen builds the kernel sensor's static load generator
// (services/collector/internal/sensor/testdata/loadgen) once per test binary.
func attemptLoadgen(tb testing.TB) string {
	tb.Helper()
	loadgenOnce.Do(func() {
		out, err := exec.Command("go", "env", "GOWORK").Output()
		if err != nil || strings.TrimSpace(string(out)) == "" {
			loadgenErr = err
			return
		}
		dir, err := os.MkdirTemp("", "whalewatch-loadgen-")
		if err != nil {
			loadgenErr = err
			return
		}
		loadgenPath = filepath.Join(dir, "loadgen")
		build := exec.Command("go", "build", "-o", loadgenPath, "./internal/sensor/testdata/loadgen")
		build.Dir = filepath.Join(filepath.Dir(strings.TrimSpace(string(out))), "services", "collector")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			loadgenErr = err
			tb.Logf("%s", out)
		}
	})
	if loadgenErr != nil {
		tb.Fatalf("building the load generator: %v", loadgenErr)
	}
	return loadgenPath
}

// dumpSensorTelemetry logs the kernel sensor's file and syscall telemetry of
// a container, for a failing case.
func dumpSensorTelemetry(tb testing.TB, st *Stack, id string) {
	for _, e := range st.Telemetry(func(e *event.Event) bool {
		return onContainer(e, id) && (e.Whalewatch.Syscall != nil || e.File != nil)
	}) {
		line := string(e.Whalewatch.Telemetry) + " " + e.Event.Action + " " + e.Event.Outcome
		if e.File != nil {
			line += " " + e.File.Path + " -> " + e.File.TargetPath
		}
		if sc := e.Whalewatch.Syscall; sc != nil {
			line += " " + sc.Name + " " + strings.Join(sc.Args, ",")
		}
		tb.Log(line)
	}
}
