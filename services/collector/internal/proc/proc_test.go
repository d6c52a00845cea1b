package proc

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

const testID = "a2c5b6c27445b4f31c001ae8ef39a5ea0241fe23c84edce66c352ac77bc6150f"

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	require.NoError(t, err)
	return b
}

func TestContainerID(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		file, want string
	}{
		{"cgroup-v1-docker.txt", testID},           // cgroupfs driver, recorded on this kind of host
		{"cgroup-v1-systemd.txt", testID},          // systemd driver, v1
		{"cgroup-v2-docker.txt", testID},           // cgroupfs driver, v2
		{"cgroup-v2-systemd.txt", testID},          // systemd driver, v2
		{"cgroup-v2-systemd-subgroup.txt", testID}, // a container's own sub-cgroup
		{"cgroup-nested-dind.txt", testID},         // Docker in Docker: the outer container
		{"cgroup-v2-kubepods.txt", testID},         // containerd under Kubernetes
		{"cgroup-host-v1.txt", ""},                 // the collector itself: memory:/process_api/<32 hex>
		{"cgroup-host-v2.txt", ""},
		{"cgroup-short-id.txt", ""},
		{"cgroup-upper-id.txt", ""},
		{"cgroup-junk.txt", ""},
	} {
		t.Run(tc.file, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tc.want, ContainerID(readTestdata(t, tc.file)))
		})
	}
}

func TestParseStat(t *testing.T) {
	t.Parallel()
	s, err := ParseStat(readTestdata(t, "stat-busybox-sleep.txt"))
	require.NoError(t, err)
	require.Equal(t, Stat{PID: 27528, Comm: "sleep", PPID: 27507, StartTicks: 242836}, s)

	s, err = ParseStat(readTestdata(t, "stat-hostile-comm.txt"))
	require.NoError(t, err)
	require.Equal(t, Stat{PID: 4242, Comm: "a) (b c) 1 ", PPID: 17, StartTicks: 999}, s)

	for _, bad := range []string{"", "stat-truncated.txt", "x (a) S 1", "(a) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21", "-1 (a) S"} {
		b := []byte(bad)
		if strings.HasSuffix(bad, ".txt") {
			b = readTestdata(t, bad)
		}
		_, err := ParseStat(b)
		require.Error(t, err, bad)
	}
}

func TestParseStatus(t *testing.T) {
	t.Parallel()
	require.Equal(t, Status{PPID: 27507, UID: "0", EUID: "0"}, ParseStatus(readTestdata(t, "status-busybox-sleep.txt")))
	require.Equal(t, Status{PPID: 1, UID: "1000", EUID: "0"}, ParseStatus([]byte("Name:\tx\nPPid:\t1\nUid:\t1000\t0\t0\t0\n")))
	require.Equal(t, Status{}, ParseStatus([]byte("PPid:\t-1\nUid:\tx y\nno colon\n")))
}

func TestParseCmdline(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("A", 100000)
	for _, tc := range []struct {
		name string
		in   string
		want []string
	}{
		{"empty (zombie or kernel thread)", "", nil},
		{"only NULs", "\x00\x00", nil},
		{"simple", "sleep\x0060\x00", []string{"sleep", "60"}},
		{"no trailing NUL (setproctitle)", "nginx: worker process", []string{"nginx: worker process"}},
		{"empty args kept", "sh\x00-c\x00\x00x\x00", []string{"sh", "-c", "", "x"}},
		{"newlines and invalid UTF-8 kept raw", "sh\x00-c\x00echo\n\xff\xfe\x00", []string{"sh", "-c", "echo\n\xff\xfe"}},
		{"very long", long + "\x00", []string{long}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tc.want, ParseCmdline([]byte(tc.in)))
		})
	}
}

func TestParseBootTime(t *testing.T) {
	t.Parallel()
	n, err := ParseBootTime([]byte("cpu  1 2 3\nbtime 1795721892\nprocesses 9\n"))
	require.NoError(t, err)
	require.Equal(t, int64(1795721892), n)
	_, err = ParseBootTime([]byte("cpu 1\n"))
	require.Error(t, err)
	_, err = ParseBootTime([]byte("btime x\n"))
	require.Error(t, err)
}

func FuzzContainerID(f *testing.F) {
	for _, name := range []string{"cgroup-v1-docker.txt", "cgroup-v2-systemd.txt", "cgroup-nested-dind.txt", "cgroup-junk.txt"} {
		f.Add(readTestdata(f, name))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		id := ContainerID(b)
		if id != "" {
			require.Len(t, id, 64)
			require.True(t, isContainerID([]byte(id)))
		}
	})
}

func FuzzParseStat(f *testing.F) {
	f.Add(readTestdata(f, "stat-busybox-sleep.txt"))
	f.Add(readTestdata(f, "stat-hostile-comm.txt"))
	f.Add([]byte("1 () S"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseStat(b)
		if err == nil {
			require.Positive(t, s.PID)
			require.GreaterOrEqual(t, s.PPID, 0)
			require.LessOrEqual(t, len(s.Comm), len(b))
		}
	})
}

func FuzzParseStatus(f *testing.F) {
	f.Add(readTestdata(f, "status-busybox-sleep.txt"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s := ParseStatus(b)
		require.GreaterOrEqual(t, s.PPID, 0)
		require.LessOrEqual(t, len(s.UID), 10)
	})
}

func FuzzParseCmdline(f *testing.F) {
	f.Add([]byte("sh\x00-c\x00echo\n\xff\x00"))
	f.Add([]byte("nginx: master"))
	f.Fuzz(func(t *testing.T, b []byte) {
		args := ParseCmdline(b)
		n := 0
		for _, a := range args {
			require.NotContains(t, a, "\x00")
			n += len(a) + 1
		}
		require.LessOrEqual(t, n, len(b)+1)
		_ = utf8.ValidString(strings.Join(args, " ")) // any bytes are accepted
	})
}

func TestStdioKind(t *testing.T) {
	t.Parallel()
	for link, want := range map[string]string{
		"socket:[12345]":       "socket",
		"pipe:[999]":           "pipe",
		"/dev/pts/3":           "tty",
		"/dev/tty1":            "tty",
		"/dev/console":         "tty",
		"/dev/null":            "null",
		"/var/log/app.log":     "file",
		"anon_inode:[eventfd]": "other",
		"":                     "other",
	} {
		if got := StdioKind(link); got != want {
			t.Errorf("StdioKind(%q) = %q, want %q", link, got, want)
		}
	}
}
