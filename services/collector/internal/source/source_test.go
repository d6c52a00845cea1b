package source

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/poll"
)

func TestUntilTick(t *testing.T) {
	t.Parallel()
	base := time.Unix(1_700_000_010, 0) // a whole number of 30 s, 5 s and 100 ms
	tests := []struct {
		name          string
		now           time.Time
		every, offset time.Duration
		want          time.Duration
	}{
		{"on a tick: a whole period", base, 30 * time.Second, 0, 30 * time.Second},
		{"just after a tick", base.Add(time.Nanosecond), 30 * time.Second, 0, 30*time.Second - time.Nanosecond},
		{"just before a tick", base.Add(-time.Millisecond), 30 * time.Second, 0, time.Millisecond},
		{"mid-period", base.Add(12 * time.Second), 30 * time.Second, 0, 18 * time.Second},
		{"short period", base.Add(30 * time.Millisecond), 100 * time.Millisecond, 0, 70 * time.Millisecond},
		{"other zone, same instant", base.Add(2 * time.Second).In(time.FixedZone("x", 3600+1800)), 5 * time.Second, 0, 3 * time.Second},
		{"offset ahead", base.Add(12 * time.Second), 30 * time.Second, 20 * time.Second, 8 * time.Second},
		{"offset passed", base.Add(25 * time.Second), 30 * time.Second, 20 * time.Second, 25 * time.Second},
		{"on an offset tick", base.Add(20 * time.Second), 30 * time.Second, 20 * time.Second, 30 * time.Second},
		{"no period", base.Add(time.Second), 0, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, UntilTick(tt.now, tt.every, tt.offset))
		})
	}
}

// The containers of one host, started apart, wake at the same instants; two
// hosts' collectors wake at different ones.
func TestUntilTickAlignsContainersAndSpreadsHosts(t *testing.T) {
	t.Parallel()
	const every = 30 * time.Second
	base := time.Unix(1_700_000_010, 0)
	next := func(host string, start time.Time) time.Time {
		return start.Add(UntilTick(start, every, poll.Phase(host, every)))
	}
	a, b := base.Add(3*time.Second+17*time.Millisecond), base.Add(21*time.Second+5*time.Microsecond)
	require.Zero(t, next("host-a", b).Sub(next("host-a", a))%every, "one grid for every container of a host")
	require.NotZero(t, next("host-b", a).Sub(next("host-a", a))%every, "another host's grid")
	require.Equal(t, poll.Phase("host-a", every), poll.Phase("host-a", every), "the same on every start")
	phases := map[time.Duration]bool{}
	for _, h := range []string{"host-a", "host-b", "host-c", "host-d"} {
		p := poll.Phase(h, every)
		require.GreaterOrEqual(t, p, time.Duration(0))
		require.Less(t, p, every)
		phases[p] = true
	}
	require.Len(t, phases, 4, "hosts spread over the period")
	require.Zero(t, poll.Phase("host-a", 0))
}
