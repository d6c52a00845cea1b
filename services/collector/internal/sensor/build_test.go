package sensor

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
)

func testBuilder() *builder {
	b := newBuilder("h", clock{offset: 1}, nil, nil)
	b.readl = func(p string) (string, error) {
		if p == "/proc/42/cwd" {
			return "/work", nil
		}
		return "", errors.New("gone")
	}
	return b
}

func decoded(t *testing.T, raw []byte) *record {
	t.Helper()
	var r record
	require.NoError(t, decode(raw, &r))
	return &r
}

const atFD = uint64(0xffffffffffffff9c) // AT_FDCWD as the kernel passes it

func TestBuildFile(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name           string
		raw            []byte
		op, path, tgt  string
		mode           string
		setuid, setgid bool
		outcome, errno string
		kind           string
	}{
		{name: "append", raw: sysRec(scOpenat, 3, "/etc/passwd", "", atFD, 0, 0o2001, 0),
			op: "write", path: "/etc/passwd", outcome: "success", kind: "changed"},
		{name: "exclusive create", raw: sysRec(scOpenat, 3, "/tmp/x", "", atFD, 0, 0o301, 0o755),
			op: "create", path: "/tmp/x", mode: "0755", outcome: "success", kind: "added"},
		{name: "read-only filesystem", raw: sysRec(scOpen, -30, "/etc/passwd", "", 0, 0o1101, 0o644),
			op: "write", path: "/etc/passwd", mode: "0644", outcome: "failure", errno: "EROFS", kind: ""},
		{name: "relative path against the cwd", raw: sysRec(scOpenat, 3, "notes.txt", "", atFD, 0, 1, 0),
			op: "write", path: "/work/notes.txt", outcome: "success", kind: "changed"},
		{name: "setuid chmod", raw: sysRec(scFchmodat, 0, "/tmp/f", "", atFD, 0, 0o4755),
			op: "chmod", path: "/tmp/f", mode: "04755", setuid: true, outcome: "success", kind: "changed"},
		{name: "setgid chmod", raw: sysRec(scChmod, 0, "/tmp/f", "", 0, 0o2755),
			op: "chmod", path: "/tmp/f", mode: "02755", setgid: true, outcome: "success", kind: "changed"},
		{name: "rename: path is the old name", raw: sysRec(scRenameat2, 0, "/tmp/new", "/tmp/old", atFD, 0, atFD, 0, 0),
			op: "rename", path: "/tmp/old", tgt: "/tmp/new", outcome: "success", kind: "changed"},
		{name: "symlink", raw: sysRec(scSymlinkat, 0, "/tmp/s", "/etc/shadow", 0, atFD, 0),
			op: "symlink", path: "/tmp/s", tgt: "/etc/shadow", outcome: "success", kind: "added"},
		{name: "refused unlink", raw: sysRec(scUnlinkat, -1, "/etc/hosts", "", atFD, 0, 0),
			op: "unlink", path: "/etc/hosts", outcome: "failure", errno: "EPERM", kind: ""},
		{name: "sensitive read", raw: func() []byte {
			b := sysRec(scOpenat, 3, "/etc/shadow", "", atFD, 0, 0, 0)
			binary.LittleEndian.PutUint32(b[offSysFlags:], flagReadSensitive)
			return b
		}(), op: "read", path: "/etc/shadow", outcome: "success", kind: ""},
		{name: "sensitive read resolved in the kernel", raw: func() []byte {
			b := sysRec(scOpenat, 3, "shadow", "/etc/shadow", atFD, 0, 0, 0)
			binary.LittleEndian.PutUint32(b[offSysFlags:], flagReadSensitive|flagResolved)
			return b
		}(), op: "read", path: "/etc/shadow", outcome: "success", kind: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := testBuilder().build(decoded(t, tc.raw))
			require.NotNil(t, e)
			require.NoError(t, e.Validate())
			require.Equal(t, event.TelemetryFile, e.Whalewatch.Telemetry)
			fc := e.Whalewatch.FileChange
			require.Equal(t, tc.op, fc.Operation)
			require.Equal(t, tc.kind, fc.Kind)
			require.Equal(t, tc.path, e.File.Path)
			require.Equal(t, tc.tgt, e.File.TargetPath)
			require.Equal(t, tc.mode, fc.Mode)
			require.Equal(t, tc.setuid, fc.Setuid)
			require.Equal(t, tc.setgid, fc.Setgid)
			require.Equal(t, tc.outcome, e.Event.Outcome)
			require.Equal(t, tc.errno, e.Whalewatch.Syscall.Errno)
			require.Equal(t, testCID, e.Container.ID)
			require.Equal(t, Mode, e.Whalewatch.Source)
		})
	}
}

func TestBuildProcessTree(t *testing.T) {
	t.Parallel()
	b := testBuilder()
	// pid 7 (the shell) exec'd, forked 42, which exec'd nc.
	parent := execRec("/bin/sh", "sh", "-c", "nc -l -p 80 -e sh")
	binary.LittleEndian.PutUint32(parent[12:], 7)
	binary.LittleEndian.PutUint32(parent[offExecPPID:], 1)
	require.NotNil(t, b.build(decoded(t, parent)))
	fork := rec(kindFork, forkSize)
	binary.LittleEndian.PutUint32(fork[12:], 7)
	binary.LittleEndian.PutUint32(fork[offForkChild:], 42)
	require.Nil(t, b.build(decoded(t, fork)))
	e := b.build(decoded(t, execRec("/bin/nc", "nc", "-l", "-p", "80", "-e", "sh")))
	require.Equal(t, "nc -l -p 80 -e sh", e.Process.CommandLine)
	require.Equal(t, 7, e.Process.Parent.PID)
	require.Equal(t, "sh", e.Process.Parent.Name)
	require.Len(t, e.Whalewatch.Ancestry, 1)
	require.Equal(t, "sh -c nc -l -p 80 -e sh", e.Whalewatch.Ancestry[0].CommandLine)
	require.Equal(t, &event.Stdio{Stdin: "socket"}, e.Whalewatch.Stdio)
	require.NoError(t, e.Validate())

	exit := rec(kindExit, exitSize)
	binary.LittleEndian.PutUint32(exit[offExitCode:], 9) // killed by SIGKILL
	x := b.build(decoded(t, exit))
	require.Equal(t, 137, *x.Process.ExitCode)
	require.Equal(t, e.Process.EntityID, x.Process.EntityID)
	require.Equal(t, "/bin/nc", x.Process.Executable)
}

func TestStdioAndExitCode(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		s    stdio
		want string
	}{
		{stdio{}, ""},
		{stdio{mode: 0o140777}, "socket"},
		{stdio{mode: 0o010600}, "pipe"},
		{stdio{mode: 0o100644}, "file"},
		{stdio{mode: 0o020666, rdev: 1<<20 | 3}, "null"},
		{stdio{mode: 0o020620, rdev: 136 << 20}, "tty"},
		{stdio{mode: 0o020666, rdev: 1<<20 | 5}, "other"},
	} {
		require.Equal(t, tc.want, stdioType(tc.s), "%o", tc.s.mode)
	}
	require.Equal(t, 3, exitCode(3<<8))
	require.Equal(t, 143, exitCode(15))
}

func TestBuildNetworkAndSyscalls(t *testing.T) {
	t.Parallel()
	b := testBuilder()
	c := sysRec(scConnect, -111, "", "", 3)
	binary.LittleEndian.PutUint16(c[offSysFamily:], afInet)
	binary.BigEndian.PutUint16(c[offSysRPort:], 4444)
	binary.LittleEndian.PutUint16(c[offSysProto:], 6)
	copy(c[offSysRAddr:], []byte{127, 0, 0, 1})
	e := b.build(decoded(t, c))
	require.Equal(t, "connect", e.Whalewatch.Socket.State)
	require.Equal(t, &event.Endpoint{IP: "127.0.0.1", Port: 4444}, e.Destination)
	require.Equal(t, "ECONNREFUSED", e.Whalewatch.Syscall.Errno)
	require.Equal(t, "failure", e.Event.Outcome)
	require.Equal(t, "tcp", e.Network.Transport)

	u := sysRec(scConnect, 0, "", "", 3)
	binary.LittleEndian.PutUint16(u[offSysFamily:], afUnix)
	copy(u[offSysPath:], "/var/run/docker.sock")
	e = b.build(decoded(t, u))
	require.Equal(t, "/var/run/docker.sock", e.Destination.Address)
	require.Equal(t, "unix", e.Network.Transport)

	m := sysRec(scMount, -1, "/mnt", "none", 0, 0, 0, 0)
	copy(m[offSysAux:], "tmpfs")
	e = b.build(decoded(t, m))
	require.Equal(t, event.TelemetrySyscall, e.Whalewatch.Telemetry)
	require.Equal(t, []string{"none", "/mnt", "tmpfs", "0x0"}, e.Whalewatch.Syscall.Args)
	require.Equal(t, "EPERM", e.Whalewatch.Syscall.Errno)

	un := b.build(decoded(t, sysRec(scUnshare, -1, "", "", 0x40020000)))
	require.Equal(t, []string{"CLONE_NEWNS|CLONE_NEWNET"}, un.Whalewatch.Syscall.Args)

	// A signal within the caller's own container (host pid namespace) is
	// routine; to another container's process it is reported.
	b.containerOf = func(pid int) string {
		if pid == 500 {
			return testCID
		}
		return "other"
	}
	require.Nil(t, b.build(decoded(t, sysRec(scKill, 0, "", "", 500, 15))))
	k := b.build(decoded(t, sysRec(scKill, 0, "", "", 600, 9)))
	require.Equal(t, []string{"600", "SIGKILL", "foreign"}, k.Whalewatch.Syscall.Args)
	init := b.build(decoded(t, sysRec(scKill, 0, "", "", 1, 15)))
	require.NotNil(t, init, "pid 1 always")
	require.Equal(t, []string{"1", "SIGTERM", "pid1"}, init.Whalewatch.Syscall.Args, "the detector's rules read the mark")
	all := b.build(decoded(t, sysRec(scKill, 0, "", "", uint64(0xffffffff), 9)))
	require.Equal(t, []string{"-1", "SIGKILL", "all"}, all.Whalewatch.Syscall.Args)
}
