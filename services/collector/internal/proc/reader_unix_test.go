//go:build unix

package proc

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// fakeProc writes a /proc/<pid> directory below a temporary root.
func fakeProc(t *testing.T, pid int, files map[string]string, links map[string]string) string {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, strconv.Itoa(pid))
	require.NoError(t, os.MkdirAll(dir, 0o755))
	for name, content := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644))
	}
	for name, target := range links {
		require.NoError(t, os.Symlink(target, filepath.Join(dir, name)))
	}
	return root
}

func TestReaderReadExec(t *testing.T) {
	t.Parallel()
	root := fakeProc(t, 27528, map[string]string{
		"cmdline": "sleep\x0060\x00",
		"stat":    string(readTestdata(t, "stat-busybox-sleep.txt")),
		"status":  string(readTestdata(t, "status-busybox-sleep.txt")),
		"cgroup":  string(readTestdata(t, "cgroup-v1-docker.txt")),
	}, map[string]string{"exe": "/bin/busybox", "cwd": "/tmp"})
	r := NewReader(root)

	id, ok := r.ContainerID(27528)
	require.True(t, ok)
	require.Equal(t, testID, id)
	x := r.ReadExec(27528)
	require.Equal(t, Exec{
		Args:       []string{"sleep", "60"},
		Executable: "/bin/busybox",
		Cwd:        "/tmp",
		Stat:       Stat{PID: 27528, Comm: "sleep", PPID: 27507, StartTicks: 242836},
		StatOK:     true,
		Status:     Status{PPID: 27507, UID: "0", EUID: "0"},
		StatusOK:   true,
	}, x)
	require.True(t, r.Alive(27528))

	// A process that is gone: nothing, no error.
	_, ok = r.ContainerID(1)
	require.False(t, ok)
	require.Equal(t, Exec{}, r.ReadExec(1))
	require.False(t, r.Alive(1))
}

func TestReaderBoundsTheCommandLine(t *testing.T) {
	t.Parallel()
	arg := strings.Repeat("B", 1000)
	cmd := strings.Repeat(arg+"\x00", 200) // 200 KB: beyond MaxCmdline
	r := NewReader(fakeProc(t, 7, map[string]string{"cmdline": cmd}, nil))
	x := r.ReadExec(7)
	require.True(t, x.ArgsTruncated)
	total := 0
	for _, a := range x.Args {
		total += len(a) + 1
	}
	require.LessOrEqual(t, total, MaxCmdline+1)
	require.Equal(t, arg, x.Args[0])
}

func TestReaderSelf(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc")
	}
	r := NewReader("/proc")
	pid := os.Getpid()
	x := r.ReadExec(pid)
	require.True(t, x.StatOK)
	require.Equal(t, pid, x.Stat.PID)
	require.Equal(t, os.Getppid(), x.Status.PPID)
	require.Equal(t, strconv.Itoa(os.Geteuid()), x.Status.EUID)
	require.Equal(t, os.Args, x.Args)
	exe, err := os.Executable()
	require.NoError(t, err)
	require.Equal(t, exe, x.Executable)
	wd, err := os.Getwd()
	require.NoError(t, err)
	require.Equal(t, wd, x.Cwd)
	bt, err := r.BootTime()
	require.NoError(t, err)
	require.Positive(t, bt)
}
