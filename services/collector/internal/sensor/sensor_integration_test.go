//go:build linux

package sensor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/testkit/dockertest"
)

// knownContainers is the Containers the tests hand the sensor: a container
// becomes known when its test registers it.
type knownContainers struct {
	mu sync.Mutex
	m  map[string]event.Container
}

func (k *knownContainers) Container(id string) (event.Container, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	c, ok := k.m[id]
	return c, ok
}

func (k *knownContainers) add(id, name string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.m[id] = event.Container{ID: id, Name: name}
}

// liveSensor is one sensor shared by the tests of this binary (loading it
// takes a second), with every event it emitted.
type liveSensor struct {
	s          *Sensor
	reg        *prometheus.Registry
	containers *knownContainers
	mu         sync.Mutex
	events     []*event.Event
}

var (
	liveOnce sync.Once
	live     *liveSensor
	liveErr  error
)

// requireSensor returns the running sensor, skipping when this machine
// cannot run it (not root, no BTF): with both, a failure to open fails.
func requireSensor(t *testing.T) *liveSensor {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the kernel sensor needs root")
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		t.Skip("the kernel sensor needs BTF (/sys/kernel/btf/vmlinux)")
	}
	liveOnce.Do(func() {
		var cfg Config
		fs := newFlagSet(&cfg)
		_ = fs.Parse(nil)
		cfg.EnrichWait = 500 * time.Millisecond
		l := &liveSensor{reg: prometheus.NewRegistry(), containers: &knownContainers{m: map[string]event.Container{}}}
		l.s, liveErr = Open(cfg, "test-host", l.containers, slog.New(slog.DiscardHandler), l.reg)
		if liveErr != nil {
			return
		}
		go func() {
			_ = l.s.Run(context.Background(), func(e *event.Event) {
				l.mu.Lock()
				l.events = append(l.events, e)
				l.mu.Unlock()
			})
		}()
		live = l
	})
	require.NoError(t, liveErr)
	return live
}

// waitFor polls the events of container id until one satisfies match.
func (l *liveSensor) waitFor(t *testing.T, id, what string, match func(*event.Event) bool) *event.Event {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		l.mu.Lock()
		for _, e := range l.events {
			if e.Container != nil && e.Container.ID == id && match(e) {
				l.mu.Unlock()
				return e
			}
		}
		l.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no %s event of container %.12s within 15s; its events:\n%s", what, id, l.dump(id))
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
}

func (l *liveSensor) dump(id string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	for _, e := range l.events {
		if e.Container != nil && e.Container.ID == id {
			fmt.Fprintf(&b, "  %s %s %s\n", e.Whalewatch.Telemetry, e.Event.Action, e.Message)
		}
	}
	return b.String()
}

func fileOp(op, path string) func(*event.Event) bool {
	return func(e *event.Event) bool {
		return e.Whalewatch.FileChange != nil && e.Whalewatch.FileChange.Operation == op && e.File != nil && e.File.Path == path
	}
}

func TestSensorContainers(t *testing.T) {
	l := requireSensor(t)
	dockertest.BusyboxImage(t)

	tests := []struct {
		name  string
		args  []string
		cmd   string
		check func(t *testing.T, l *liveSensor, id string)
	}{
		{
			name: "exec of a 10 ms process",
			// env execs usleep (the shell would run the applet in itself).
			cmd: "env usleep 10000; exit 0",
			check: func(t *testing.T, l *liveSensor, id string) {
				e := l.waitFor(t, id, "exec usleep", func(e *event.Event) bool {
					return e.Event.Action == "exec" && slices.Equal(e.Process.Args, []string{"usleep", "10000"})
				})
				require.Equal(t, event.TelemetryProcess, e.Whalewatch.Telemetry)
				require.Equal(t, Mode, e.Whalewatch.Source)
				require.Equal(t, "usleep", e.Process.Name)
				require.NotEmpty(t, e.Process.EntityID)
				require.NotNil(t, e.Process.Parent)
				require.NotEmpty(t, e.Whalewatch.Ancestry, "the shell is the parent")
				require.Equal(t, "sh", e.Whalewatch.Ancestry[0].Name)
				require.Equal(t, "sensor-"+id[:12], e.Container.Name, "enriched with the container's metadata")
				x := l.waitFor(t, id, "exit of usleep", func(x *event.Event) bool {
					return x.Event.Action == "exit" && x.Process.PID == e.Process.PID
				})
				require.NotNil(t, x.Process.ExitCode)
				require.Equal(t, 0, *x.Process.ExitCode)
				require.Equal(t, e.Process.EntityID, x.Process.EntityID)
			},
		},
		{
			name: "write to /etc/passwd",
			cmd:  "echo 'x:x:1:1::/:/bin/sh' >> /etc/passwd",
			check: func(t *testing.T, l *liveSensor, id string) {
				e := l.waitFor(t, id, "write /etc/passwd", fileOp("write", "/etc/passwd"))
				require.Equal(t, "success", e.Event.Outcome)
				require.Equal(t, event.TelemetryFile, e.Whalewatch.Telemetry)
				require.Equal(t, "openat", e.Whalewatch.Syscall.Name)
				require.Contains(t, e.Whalewatch.Syscall.Args[2], "O_APPEND")
				require.Less(t, e.Event.Created.Sub(e.Timestamp), time.Second)
			},
		},
		{
			name: "refused write on a read-only container",
			args: []string{"--read-only"},
			cmd:  "echo x > /etc/passwd",
			check: func(t *testing.T, l *liveSensor, id string) {
				e := l.waitFor(t, id, "refused write", fileOp("write", "/etc/passwd"))
				require.Equal(t, "failure", e.Event.Outcome)
				require.Equal(t, "EROFS", e.Whalewatch.Syscall.Errno)
				require.Equal(t, int64(-30), e.Whalewatch.Syscall.Return)
			},
		},
		{
			name: "chmod u+s, rename, unlink",
			cmd:  "touch /tmp/f && chmod u+s /tmp/f && mv /tmp/f /tmp/g && rm /tmp/g",
			check: func(t *testing.T, l *liveSensor, id string) {
				e := l.waitFor(t, id, "chmod", fileOp("chmod", "/tmp/f"))
				require.True(t, e.Whalewatch.FileChange.Setuid)
				require.False(t, e.Whalewatch.FileChange.Setgid)
				require.Equal(t, "04", e.Whalewatch.FileChange.Mode[:2])
				r := l.waitFor(t, id, "rename", fileOp("rename", "/tmp/f"))
				require.Equal(t, "/tmp/g", r.File.TargetPath)
				l.waitFor(t, id, "unlink", fileOp("unlink", "/tmp/g"))
			},
		},
		{
			name: "read of /etc/shadow",
			cmd: "echo 'root:*:1::::::' > /etc/shadow && cat /etc/shadow >/dev/null && (cd /etc && cat shadow >/dev/null) && " +
				"cat /tmp/../etc/shadow >/dev/null && cat /etc/hostname >/dev/null",
			check: func(t *testing.T, l *liveSensor, id string) {
				e := l.waitFor(t, id, "read /etc/shadow", fileOp("read", "/etc/shadow"))
				require.Equal(t, "success", e.Event.Outcome)
				require.Equal(t, "cat", e.Process.Name)
				// Relative paths and ".." are resolved from the opened file.
				for _, cmdline := range []string{"cat shadow", "cat /tmp/../etc/shadow"} {
					l.waitFor(t, id, cmdline, func(e *event.Event) bool {
						return fileOp("read", "/etc/shadow")(e) && e.Process.CommandLine == cmdline
					})
				}
				// Reads of other paths are not reported.
				l.waitFor(t, id, "exit of the last cat", func(e *event.Event) bool {
					return e.Event.Action == "exit" && strings.Contains(e.Process.CommandLine, "/etc/hostname")
				})
				for _, e := range l.snapshot(id) {
					require.False(t, e.File != nil && e.File.Path == "/etc/hostname", "read of /etc/hostname reported")
				}
			},
		},
		{
			name: "refused connect to a closed loopback port",
			cmd:  "nc 127.0.0.1 9 </dev/null",
			check: func(t *testing.T, l *liveSensor, id string) {
				e := l.waitFor(t, id, "connect", func(e *event.Event) bool {
					return e.Whalewatch.Socket != nil && e.Whalewatch.Socket.State == "connect"
				})
				require.Equal(t, "failure", e.Event.Outcome)
				require.Equal(t, "ECONNREFUSED", e.Whalewatch.Syscall.Errno)
				require.Equal(t, "127.0.0.1", e.Destination.IP)
				require.Equal(t, 9, e.Destination.Port)
				require.Equal(t, "tcp", e.Network.Transport)
				require.Equal(t, "egress", e.Network.Direction)
			},
		},
		{
			name: "listener, accepted connection, shell over a socket",
			cmd: "nc -l -p 8081 -e sh & " +
				"for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do echo exit | nc 127.0.0.1 8081 && break; usleep 50000; done; wait",
			check: func(t *testing.T, l *liveSensor, id string) {
				l.waitFor(t, id, "tcp listen", func(e *event.Event) bool {
					return e.Whalewatch.Socket != nil && e.Whalewatch.Socket.State == "listen" && e.Source != nil && e.Source.Port == 8081
				})
				a := l.waitFor(t, id, "accept", func(e *event.Event) bool {
					return e.Whalewatch.Socket != nil && e.Whalewatch.Socket.State == "accept" && e.Event.Outcome == "success"
				})
				require.Equal(t, 8081, a.Source.Port)
				require.Equal(t, "127.0.0.1", a.Destination.IP)
				require.Equal(t, "ingress", a.Network.Direction)
				l.waitFor(t, id, "tcp established", func(e *event.Event) bool {
					return e.Whalewatch.Socket != nil && e.Whalewatch.Socket.State == "established"
				})
				sh := l.waitFor(t, id, "exec of the network shell", func(e *event.Event) bool {
					return e.Event.Action == "exec" && e.Process.Name == "sh" && e.Whalewatch.Stdio != nil && e.Whalewatch.Stdio.Stdin == "socket"
				})
				require.Equal(t, "socket", sh.Whalewatch.Stdio.Stdout)
			},
		},
		{
			name: "refused mount and unshare",
			cmd:  "mount -t tmpfs none /mnt; unshare -n true; exit 0",
			check: func(t *testing.T, l *liveSensor, id string) {
				m := l.waitFor(t, id, "mount", func(e *event.Event) bool { return e.Event.Action == "mount" })
				require.Equal(t, event.TelemetrySyscall, m.Whalewatch.Telemetry)
				require.Equal(t, "failure", m.Event.Outcome)
				require.Equal(t, "EPERM", m.Whalewatch.Syscall.Errno)
				require.Equal(t, []string{"none", "/mnt", "tmpfs"}, m.Whalewatch.Syscall.Args[:3])
				u := l.waitFor(t, id, "unshare", func(e *event.Event) bool { return e.Event.Action == "unshare" })
				require.Equal(t, "EPERM", u.Whalewatch.Syscall.Errno)
				require.Equal(t, "CLONE_NEWNET", u.Whalewatch.Syscall.Args[0])
			},
		},
		{
			name: "privileged calls and links",
			cmd: "chroot / true; kill -CONT 1; nsenter -t 1 -n true; pivot_root /tmp /tmp/x; umount /proc; " +
				"su -s /bin/true nobody; ln -s /etc/shadow /tmp/s; truncate -s 0 /tmp/t; exit 0",
			check: func(t *testing.T, l *liveSensor, id string) {
				syscall := func(name string) *event.Event {
					return l.waitFor(t, id, name, func(e *event.Event) bool {
						return e.Whalewatch.Syscall != nil && e.Whalewatch.Syscall.Name == name
					})
				}
				c := syscall("chroot")
				require.Equal(t, []string{"/"}, c.Whalewatch.Syscall.Args)
				require.Equal(t, "success", c.Event.Outcome)
				k := syscall("kill")
				require.Equal(t, []string{"1", "SIGCONT", "pid1"}, k.Whalewatch.Syscall.Args)
				for _, refused := range []string{"setns", "pivot_root", "umount2"} {
					e := syscall(refused)
					require.Equal(t, "failure", e.Event.Outcome, refused)
					require.Equal(t, "EPERM", e.Whalewatch.Syscall.Errno, refused)
					require.Equal(t, event.TelemetrySyscall, e.Whalewatch.Telemetry)
				}
				require.Equal(t, "/tmp", syscall("pivot_root").Whalewatch.Syscall.Args[0])
				u := syscall("setuid")
				require.Equal(t, []string{"65534"}, u.Whalewatch.Syscall.Args)
				require.Equal(t, "su", u.Process.Name)
				s := l.waitFor(t, id, "symlink", fileOp("symlink", "/tmp/s"))
				require.Equal(t, "/etc/shadow", s.File.TargetPath)
				l.waitFor(t, id, "ftruncate", func(e *event.Event) bool {
					return e.Whalewatch.FileChange != nil && e.Whalewatch.FileChange.Operation == "truncate" && strings.HasSuffix(e.File.Path, "t")
				})
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"--name", fmt.Sprintf("sensor-test-%d", time.Now().UnixNano())}, tc.args...)
			// The container is known before it starts, like the
			// collector knows it from Docker's create event.
			id := dockertest.Create(t, args, "sh", "-c", tc.cmd)
			l.containers.add(id, "sensor-"+id[:12])
			dockertest.Docker(t, "start", id)
			tc.check(t, l, id)
		})
	}
}

func (l *liveSensor) snapshot(id string) []*event.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*event.Event
	for _, e := range l.events {
		if e.Container != nil && e.Container.ID == id {
			out = append(out, e)
		}
	}
	return out
}

// TestSensorHostProcessesIgnored: what a host process does is not reported,
// however close it is to what a container does.
func TestSensorHostProcessesIgnored(t *testing.T) {
	l := requireSensor(t)
	marker := fmt.Sprintf("/tmp/whalewatch-sensor-host-%d", time.Now().UnixNano())
	t.Cleanup(func() { os.Remove(marker) })
	require.NoError(t, exec.Command("sh", "-c", "echo x > "+marker+" && chmod u+s "+marker).Run())
	// A container event after the host's: once it is seen, the host's
	// would have been too.
	id := dockertest.Create(t, nil, "sh", "-c", "echo x > /tmp/after")
	dockertest.Docker(t, "start", id)
	l.waitFor(t, id, "write /tmp/after", fileOp("write", "/tmp/after"))
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.events {
		require.False(t, e.File != nil && e.File.Path == marker, "host write reported: %s", e.Message)
		require.NotNil(t, e.Container)
	}
}

func TestSensorMetrics(t *testing.T) {
	l := requireSensor(t)
	id := dockertest.Create(t, nil, "sh", "-c", "echo x > /tmp/m")
	dockertest.Docker(t, "start", id)
	l.waitFor(t, id, "write /tmp/m", fileOp("write", "/tmp/m"))
	n, err := testutil.GatherAndCount(l.reg, "whalewatch_sensor_events_total", "whalewatch_sensor_ring_drops_total",
		"whalewatch_sensor_latency_seconds", "whalewatch_sensor_programs_attached")
	require.NoError(t, err)
	require.GreaterOrEqual(t, n, 4)
	require.Zero(t, testutil.ToFloat64(l.s.m.decodeErrors))
	require.Greater(t, testutil.ToFloat64(l.s.m.events.WithLabelValues("file")), 0.0)
}

func TestOpenRefusesBadConfig(t *testing.T) {
	_, err := Open(Config{RingBufferBytes: 1000}, "h", &knownContainers{}, nil, nil)
	require.Error(t, err)
	require.False(t, errors.Is(err, ErrUnsupported))
}

var (
	loadgenOnce sync.Once
	loadgenPath string
	loadgenErr  error
)

// loadgen builds testdata/loadgen once per test binary (static, to be
// copied into a FROM-scratch container).
func loadgen(t testing.TB) string {
	t.Helper()
	loadgenOnce.Do(func() {
		dir, err := os.MkdirTemp("", "whalewatch-loadgen-")
		if err != nil {
			loadgenErr = err
			return
		}
		loadgenPath = dir + "/loadgen"
		build := exec.Command("go", "build", "-o", loadgenPath, "./testdata/loadgen")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			loadgenErr = fmt.Errorf("building loadgen: %w: %s", err, out)
		}
	})
	require.NoError(t, loadgenErr)
	return loadgenPath
}

// TestSensorProbesAndFilelessExec: the calls of issue 14 busybox has no
// applet for, made by a static helper in the container.
func TestSensorProbesAndFilelessExec(t *testing.T) {
	l := requireSensor(t)
	id := dockertest.Create(t, nil, "sleep", "60")
	l.containers.add(id, "sensor-"+id[:12])
	dockertest.Docker(t, "start", id)
	dockertest.Docker(t, "cp", loadgen(t), id+":/bin/loadgen")
	_, _ = dockertest.Try("exec", id, "loadgen", "calls") // most calls are refused: that is the point

	syscall := func(name string) *event.Event {
		return l.waitFor(t, id, name, func(e *event.Event) bool {
			return e.Whalewatch.Syscall != nil && e.Whalewatch.Syscall.Name == name
		})
	}
	require.Equal(t, []string{"PTRACE_ATTACH", "1"}, syscall("ptrace").Whalewatch.Syscall.Args)
	require.Equal(t, []string{"1"}, syscall("process_vm_readv").Whalewatch.Syscall.Args)
	b := syscall("bpf")
	require.Equal(t, []string{"BPF_PROG_LOAD"}, b.Whalewatch.Syscall.Args)
	require.Equal(t, "failure", b.Event.Outcome)
	require.Equal(t, "whalewatch-fileless", syscall("memfd_create").Whalewatch.Syscall.Args[0])
	syscall("capset")
	c := syscall("clone")
	require.Contains(t, c.Whalewatch.Syscall.Args[0], "CLONE_NEWUSER")
	x := syscall("execveat")
	require.Equal(t, "AT_EMPTY_PATH", x.Whalewatch.Syscall.Args[2])
	require.Equal(t, int64(0), x.Whalewatch.Syscall.Return)
	require.Equal(t, event.TelemetrySyscall, x.Whalewatch.Telemetry)
}
