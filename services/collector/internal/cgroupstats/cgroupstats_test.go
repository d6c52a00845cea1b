package cgroupstats

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// tree copies testdata/<name> into a temporary directory and returns it
// with the recorded container's id.
func tree(t *testing.T, name string) (string, string) {
	t.Helper()
	dst := t.TempDir()
	require.NoError(t, os.CopyFS(dst, os.DirFS(filepath.Join("testdata", name))))
	id, err := os.ReadFile(filepath.Join(dst, "container-id"))
	require.NoError(t, err)
	return dst, strings.TrimSpace(string(id))
}

func TestReadRecordedTrees(t *testing.T) {
	t.Parallel()
	net := NetCounters{RxBytes: 1296, TxBytes: 726, RxPackets: 12, TxPackets: 9}
	tests := []struct {
		name    string
		version Version
		want    Sample
	}{
		{"v1", V1, Sample{
			CPUUsageNanos: 19643195, CPULimitCores: 0.5, MemoryUsage: 761856, MemoryLimit: 64 << 20, PIDs: 1, Net: net,
		}},
		{"v2", V2, Sample{
			CPUUsageNanos: 5e9, CPULimitCores: 0.5, MemoryUsage: 12 << 20, InactiveFile: 4 << 20, MemoryLimit: 64 << 20,
			PIDs: 4, ReadBytes: 8192, WriteBytes: 16385, Net: net,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			root, id := tree(t, tt.name)
			r, err := New(filepath.Join(root, "proc"), filepath.Join(root, "sys/fs/cgroup"))
			require.NoError(t, err)
			require.Equal(t, tt.version, r.Version())
			c, err := r.Locate(4242, id)
			require.NoError(t, err)
			t.Cleanup(func() { c.Close() })
			got, err := r.Read(c)
			require.NoError(t, err)
			require.Equal(t, tt.want, got)

			_, err = r.Locate(4242, "0123456789ab")
			require.ErrorContains(t, err, "is not container", "a pid of another cgroup (reused, or a remote engine's)")
			_, err = r.Locate(4243, id)
			require.Error(t, err, "no such pid")
			require.NoError(t, os.WriteFile(filepath.Join(root, "proc/4242/cgroup"),
				[]byte("0::/../docker-"+id+".scope\n2:cpuacct:/../"+id+"\n"), 0o644))
			_, err = r.Locate(4242, id)
			require.ErrorContains(t, err, "outside", "a collector in its own cgroup namespace")
		})
	}
}

// A located container's files are held open and read again at each sample:
// a counter rewritten in place is seen, a required counter that breaks
// fails the sample, and a tree that is gone cannot be located. (On cgroupfs
// a removed cgroup's open files fail with ENODEV: TestReadRealCgroup.)
func TestReadSeesEachSampleAndFailsOnABrokenCounter(t *testing.T) {
	t.Parallel()
	for _, v := range []string{"v1", "v2"} {
		t.Run(v, func(t *testing.T) {
			t.Parallel()
			root, id := tree(t, v)
			r, err := New(filepath.Join(root, "proc"), filepath.Join(root, "sys/fs/cgroup"))
			require.NoError(t, err)
			c, err := r.Locate(4242, id)
			require.NoError(t, err)
			t.Cleanup(func() { c.Close() })
			before, err := r.Read(c)
			require.NoError(t, err)

			cpu, mem := "cpuacct/docker/"+id+"/cpuacct.usage", "memory/docker/"+id+"/memory.usage_in_bytes"
			if v == "v2" {
				cpu, mem = "system.slice/docker-"+id+".scope/cpu.stat", "system.slice/docker-"+id+".scope/memory.current"
			}
			cg := filepath.Join(root, "sys/fs/cgroup")
			require.NoError(t, os.WriteFile(filepath.Join(cg, mem), []byte("7\n"), 0o644)) // in place: same file
			got, err := r.Read(c)
			require.NoError(t, err)
			require.Equal(t, uint64(7), got.MemoryUsage)
			require.Equal(t, before.CPUUsageNanos, got.CPUUsageNanos)

			require.NoError(t, os.WriteFile(filepath.Join(cg, cpu), []byte("garbage\n"), 0o644))
			_, err = r.Read(c)
			require.Error(t, err)

			require.NoError(t, os.RemoveAll(filepath.Dir(filepath.Join(cg, mem))))
			_, err = r.Locate(4242, id)
			require.Error(t, err, "found, but not readable")
		})
	}
}

// Located containers hold at most the Reader's budget of descriptors; past
// it their counters are read by path, with the same results.
func TestDescriptorBudget(t *testing.T) {
	t.Parallel()
	for _, budget := range []int64{0, 3, 1000} {
		t.Run(strconv.FormatInt(budget, 10), func(t *testing.T) {
			t.Parallel()
			root, id := tree(t, "v1")
			r, err := New(filepath.Join(root, "proc"), filepath.Join(root, "sys/fs/cgroup"))
			require.NoError(t, err)
			require.Positive(t, r.maxHeld, "half the process's limit")
			r.maxHeld = budget
			c, err := r.Locate(4242, id)
			require.NoError(t, err)
			require.Equal(t, min(budget, 9), r.held.Load(), "8 cgroup files and net/dev")
			require.NoError(t, os.WriteFile(filepath.Join(root, "sys/fs/cgroup/memory/docker", id, "memory.usage_in_bytes"), []byte("7\n"), 0o644))
			got, err := r.Read(c)
			require.NoError(t, err)
			require.Equal(t, uint64(7), got.MemoryUsage)
			require.Equal(t, 0.5, got.CPULimitCores)
			require.NoError(t, c.Close())
			require.Zero(t, r.held.Load())
		})
	}
}

func TestUnlimitedV2AndHostNetwork(t *testing.T) {
	t.Parallel()
	root, id := tree(t, "v2")
	dir := filepath.Join(root, "sys/fs/cgroup/system.slice/docker-"+id+".scope")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "cpu.max"), []byte("max 100000\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "memory.max"), []byte("max\n"), 0o644))
	for _, pid := range []string{"1", "4242"} { // same network namespace as the host's init
		require.NoError(t, os.MkdirAll(filepath.Join(root, "proc", pid, "ns"), 0o755))
		require.NoError(t, os.Symlink("net:[4026531840]", filepath.Join(root, "proc", pid, "ns", "net")))
	}
	r, err := New(filepath.Join(root, "proc"), filepath.Join(root, "sys/fs/cgroup"))
	require.NoError(t, err)
	c, err := r.Locate(4242, id)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	got, err := r.Read(c)
	require.NoError(t, err)
	require.Zero(t, got.CPULimitCores)
	require.Zero(t, got.MemoryLimit)
	require.Zero(t, got.Net, "the host's interfaces are not the container's")
}

func TestNewWithoutCgroups(t *testing.T) {
	t.Parallel()
	_, err := New(t.TempDir(), t.TempDir())
	require.Error(t, err)
}

func TestParsers(t *testing.T) {
	t.Parallel()
	require.Equal(t, map[string]string{"cpu": "/a", "cpuacct": "/a", "memory": "/b", "": "/u"},
		ParseProcCgroup([]byte("12:name=systemd:/x\n3:cpu,cpuacct:/a\n4:memory:/b\n0::/u\ngarbage\n5:pids:relative\n")))
	for key, want := range map[string]struct {
		v  uint64
		ok bool
	}{"a": {1, true}, "b": {2, true}, "c": {0, false}, "d": {0, false}, "e": {0, false}, "inactive_file": {7, true}} {
		v, ok := KeyedValue([]byte("a 1\nb 2\nc x\nd\ntotal_inactive_file 9\ninactive_file 7"), key)
		require.Equal(t, want.v, v, key)
		require.Equal(t, want.ok, ok, key)
	}
	require.Equal(t, 1.5, ParseCPUMax([]byte("150000 100000\n")))
	require.Zero(t, ParseCPUMax([]byte("max 100000\n")))
	require.Zero(t, ParseCPUMax([]byte("1 0\n")))
	r, w := ParseIOStat([]byte("8:0 rbytes=1 wbytes=2 rios=3\n\n8:16 rbytes=10 wbytes=x\n"))
	require.Equal(t, [2]uint64{11, 2}, [2]uint64{r, w})
	r, w = ParseBlkio([]byte("8:0 Read 5\n8:0 Write 7\n8:0 Sync 12\n8:0 Total 12\n8:16 Read 1\nTotal 13\n"))
	require.Equal(t, [2]uint64{6, 7}, [2]uint64{r, w})
	require.Equal(t, NetCounters{RxBytes: 3, RxPackets: 4, TxBytes: 5, TxPackets: 6},
		ParseNetDev([]byte("Inter-| x\n face |y\n    lo: 9 9 0 0 0 0 0 0 9 9 0 0 0 0 0 0\n"+
			"  eth0: 1 2 0 0 0 0 0 0 2 3 0 0 0 0 0 0\n  eth1: 2 2 0 0 0 0 0 0 3 3 0 0 0 0 0 0\n  bad: 1 2\n  x: a 1 0 0 0 0 0 0 1 1\n")))
}

// FuzzParsers feeds the same bytes to every parser: none may panic.
func FuzzParsers(f *testing.F) {
	for _, s := range []string{
		"0::/docker/abc\n3:cpu,cpuacct:/a\n", "usage_usec 5\n", "max 100000", "8:0 rbytes=1 wbytes=2\n",
		"8:0 Read 5\nTotal 5\n", "  eth0: 1 2 0 0 0 0 0 0 2 3 0 0 0 0 0 0\n", ":::\n", "x: \n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ParseProcCgroup(data)
		KeyedValue(data, "usage_usec")
		ParseCPUMax(data)
		ParseIOStat(data)
		ParseBlkio(data)
		ParseNetDev(data)
	})
}

func BenchmarkReadV1(b *testing.B) {
	root := b.TempDir()
	require.NoError(b, os.CopyFS(root, os.DirFS("testdata/v1")))
	id, _ := os.ReadFile(filepath.Join(root, "container-id"))
	r, err := New(filepath.Join(root, "proc"), filepath.Join(root, "sys/fs/cgroup"))
	require.NoError(b, err)
	c, err := r.Locate(4242, strings.TrimSpace(string(id)))
	require.NoError(b, err)
	b.Cleanup(func() { c.Close() })
	for b.Loop() {
		if _, err := r.Read(c); err != nil {
			b.Fatal(err)
		}
	}
}
