package partition

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestWatchObserve(t *testing.T) {
	t.Parallel()
	type look struct {
		at     time.Duration // since the first look
		leader string
		active time.Duration // -1: not heard from since this leader started it
		move   bool
		moved  bool // the watcher moved the leader after this look
	}
	cases := []struct {
		name  string
		looks []look
	}{
		{"healthy source heard every second", []look{
			{0, "n1", 500 * time.Millisecond, false, false},
			{time.Second, "n1", 900 * time.Millisecond, false, false},
			{2 * time.Second, "n1", 100 * time.Millisecond, false, false},
		}},
		{"source of a live leader unheard for three seconds", []look{
			{0, "n1", 500 * time.Millisecond, false, false},
			{time.Second, "n1", 1500 * time.Millisecond, false, false},
			{2 * time.Second, "n1", 2500 * time.Millisecond, false, false},
			{3 * time.Second, "n1", 3500 * time.Millisecond, true, false},
		}},
		{"new leader whose source never answered", []look{
			{0, "n1", -1, false, false},
			{time.Second, "n1", -1, false, false},
			{2 * time.Second, "n1", -1, false, false},
			{3 * time.Second, "n1", -1, true, false},
		}},
		{"new leader gets its own time after a stalled one", []look{
			{0, "n1", 9 * time.Second, true, false}, // telemetry had no leader yet
			{time.Second, "n1", 10 * time.Second, true, true},
			{2 * time.Second, "n2", -1, false, false},
			{3 * time.Second, "n2", -1, false, false},
			{4 * time.Second, "n2", 200 * time.Millisecond, false, false},
		}},
		{"new leader stalled as well is moved again only after the grace", []look{
			{0, "n1", 9 * time.Second, true, false}, // telemetry had no leader yet
			{time.Second, "n1", 10 * time.Second, true, true},
			{2 * time.Second, "n2", -1, false, false},
			{6 * time.Second, "n2", -1, false, false}, // unheard 4 s, moved 5 s ago
			{11 * time.Second, "n2", -1, true, true},
		}},
		{"a source heard again resets the count", []look{
			{0, "n1", -1, false, false},
			{2 * time.Second, "n1", 100 * time.Millisecond, false, false},
			{4 * time.Second, "n1", -1, false, false},
			{6 * time.Second, "n1", -1, false, false},
			{7 * time.Second, "n1", -1, true, false},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := watch{stallAfter: 3 * time.Second, grace: 10 * time.Second}
			// The first look names the leader; a watcher starting on a
			// stalled source waits stallAfter of its own.
			start := time.Unix(1000, 0)
			w.leader = tc.looks[0].leader
			for i, l := range tc.looks {
				now := start.Add(l.at)
				require.Equal(t, l.move, w.observe(now, l.leader, l.active), "look %d", i)
				if l.moved {
					w.moved(now)
				}
			}
		})
	}
}
