package notifier

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/services/notifier/internal/render"
)

// accounted sums what notices stand for, as their metadata will say.
func accounted(ps []pendingNotice) int {
	n := 0
	for _, p := range ps {
		switch {
		case p.n.Kind == render.KindDigest:
			n += p.n.Digest.Count
		case p.ref != "": // an update of the posted alert: its first is counted already
			n += p.n.Count - 1
		default:
			n += p.n.Count
		}
	}
	return n
}

func TestAggregatorAccountsForEveryThreat(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     aggConfig
		sev     event.Severity
		n, c, r int // threats, containers, rules
		maxPost int
	}{
		{"burst of lows, webhook", aggConfig{Window: time.Minute, Budget: 20, DigestEvery: 30 * time.Second}, event.SeverityLow, 10000, 40, 3, 9},                // 5 at once, 20/min over the 10 s of the burst
		{"burst of lows, web API", aggConfig{Window: time.Minute, Budget: 20, DigestEvery: 30 * time.Second, Updates: true}, event.SeverityLow, 10000, 40, 3, 9}, // 5 at once, 20/min over the 10 s of the burst
		{"highs are always posted, grouped", aggConfig{Window: time.Minute, Budget: 20, DigestEvery: 30 * time.Second}, event.SeverityHigh, 1000, 10, 2, 20},
		{"no grouping, no budget", aggConfig{DigestEvery: time.Second}, event.SeverityLow, 100, 100, 1, 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			a := newAggregator(tt.cfg, now)
			posted := 0
			for i, e := range burst(tt.n, tt.c, tt.r, tt.sev) {
				now = now.Add(time.Millisecond)
				if a.admit(e, now) == admitPost {
					posted++
					a.posted(e, fmt.Sprintf("C1/%d", i))
				}
			}
			require.LessOrEqual(t, posted, tt.maxPost)
			due := a.due(now.Add(2 * time.Minute))
			require.Equal(t, tt.n, posted+accounted(due))
			if tt.cfg.Updates {
				for _, p := range due {
					require.True(t, p.n.Kind == render.KindDigest || p.ref != "", "groups update their message")
				}
			}
		})
	}
}

func TestAggregatorFailuresStayCounted(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	a := newAggregator(aggConfig{Window: time.Second, Budget: 4, DigestEvery: time.Second}, now)
	es := burst(10, 1, 1, event.SeverityLow) // one group
	require.Equal(t, admitPost, a.admit(es[0], now))
	for _, e := range es[1:] {
		require.Equal(t, admitGrouped, a.admit(e, now))
	}
	a.abandon(es[0], now) // the first post failed: its repeats go to the digest
	due := a.due(now.Add(2 * time.Second))
	require.Len(t, due, 1)
	require.Equal(t, 9, due[0].n.Digest.Count)
	a.failed(due[0], now) // the digest failed too: it comes back
	due = a.due(now.Add(4 * time.Second))
	require.Len(t, due, 1)
	require.Equal(t, 9, due[0].n.Digest.Count)

	stale := threat(event.NewID(), event.SeverityCritical)
	a.stale(stale, now)
	due = a.due(now.Add(6 * time.Second))
	require.Len(t, due, 1)
	require.Equal(t, 1, due[0].n.Digest.Stale)
}

func TestWebAPIGroupUpdatesWhileOpen(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	a := newAggregator(aggConfig{Window: time.Minute, Budget: 20, DigestEvery: time.Minute, Updates: true}, now)
	es := burst(30, 1, 1, event.SeverityHigh)
	require.Equal(t, admitPost, a.admit(es[0], now))
	a.posted(es[0], "C1/1")
	for _, e := range es[1:10] {
		a.admit(e, now)
	}
	require.Empty(t, a.due(now.Add(5*time.Second)), "not before the update interval")
	due := a.due(now.Add(10 * time.Second))
	require.Len(t, due, 1)
	require.True(t, due[0].interim)
	require.Equal(t, 10, due[0].n.Count)
	a.failed(due[0], now) // an interim update that failed changes no count
	require.Empty(t, a.due(now.Add(20*time.Second)), "no change, no update")
	for _, e := range es[10:] {
		a.admit(e, now.Add(20*time.Second))
	}
	due = a.due(now.Add(time.Minute))
	require.Len(t, due, 1)
	require.False(t, due[0].interim)
	require.Equal(t, 30, due[0].n.Count, "the final update has every threat")
}

func TestBudgetRefills(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	a := newAggregator(aggConfig{Budget: 20, DigestEvery: time.Minute}, now)
	took := 0
	for range 100 {
		if a.take(now) {
			took++
		}
	}
	require.Equal(t, 5, took, "a burst gets a quarter of the budget")
	now = now.Add(time.Minute)
	for range 100 {
		if a.take(now) {
			took++
		}
	}
	require.Equal(t, 10, took, "the bucket holds a quarter of the budget")
}
