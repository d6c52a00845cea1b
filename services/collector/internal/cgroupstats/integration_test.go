package cgroupstats

import (
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/testkit/dockertest"
)

// The held files of a real container's cgroup give fresh counters at each
// read, and fail once the container is gone.
func TestReadRealCgroup(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("the host's cgroup and /proc files of a container need root")
	}
	dockertest.Available(t)
	r, err := New("/proc", "/sys/fs/cgroup")
	require.NoError(t, err)
	// Busy for a while (CPU grows between samples), then idle.
	id := dockertest.Run(t, nil, "sh", "-c", "i=0; while [ $i -lt 3000000 ]; do i=$((i+1)); done; sleep 300")
	pid, err := strconv.Atoi(dockertest.Docker(t, "inspect", "-f", "{{.State.Pid}}", id))
	require.NoError(t, err)
	c, err := r.Locate(pid, id)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	first, err := r.Read(c)
	require.NoError(t, err)
	require.NotZero(t, first.MemoryUsage)
	require.EqualValues(t, 1, first.PIDs)
	require.Eventually(t, func() bool {
		s, err := r.Read(c)
		return err == nil && s.CPUUsageNanos > first.CPUUsageNanos
	}, 30*time.Second, 50*time.Millisecond, "CPU time read again from the held file")

	dockertest.Remove(id)
	require.Eventually(t, func() bool {
		_, err := r.Read(c)
		return err != nil
	}, 30*time.Second, 50*time.Millisecond, "a removed cgroup's files fail")
}
