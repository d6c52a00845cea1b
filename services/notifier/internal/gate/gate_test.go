package gate

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/testkit/natstest"
)

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"1", time.Second},
		{"30", 30 * time.Second},
		{" 2 ", 2 * time.Second},
		{"1.5", 1500 * time.Millisecond},
		{"0.25", 250 * time.Millisecond},
		{"0", 0},
		{"", DefaultRetryAfter},
		{"soon", DefaultRetryAfter},
		{"-3", DefaultRetryAfter},
		{"NaN", DefaultRetryAfter},
		{"99999999", MaxHold},
		{now.Add(7 * time.Second).Format(http.TimeFormat), 7 * time.Second},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0},
		{now.Add(24 * time.Hour).Format(http.TimeFormat), MaxHold},
		{now.Add(3 * time.Second).Format(time.RFC850), 3 * time.Second},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, ParseRetryAfter(tt.in, now), "%q", tt.in)
	}
}

func TestBackoffAndProbe(t *testing.T) {
	t.Parallel()
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	g := New("d", nil)
	g.now = func() time.Time { return clock }
	ctx := t.Context()

	require.Zero(t, g.Acquire(ctx))
	require.Equal(t, 500*time.Millisecond, g.Failed(ctx))
	require.Equal(t, 500*time.Millisecond, g.Acquire(ctx), "held")
	clock = clock.Add(500 * time.Millisecond)
	require.Zero(t, g.Acquire(ctx), "the probe")
	require.Positive(t, g.Acquire(ctx), "one probe at a time")
	require.Equal(t, time.Second, g.Failed(ctx))
	clock = clock.Add(time.Second)
	require.Zero(t, g.Acquire(ctx))
	require.Equal(t, 2*time.Second, g.Failed(ctx))
	for range 20 {
		clock = g.Until()
		require.Zero(t, g.Acquire(ctx))
		require.LessOrEqual(t, g.Failed(ctx), maxBackoff)
	}
	clock = g.Until()
	require.Zero(t, g.Acquire(ctx))
	g.Success()
	require.Zero(t, g.Acquire(ctx))
	require.Zero(t, g.Acquire(ctx), "healthy: no probing")
	require.Equal(t, 3*time.Second, g.RateLimited(ctx, 3*time.Second))
	require.Equal(t, 3*time.Second, g.Acquire(ctx))
}

func TestHoldIsShared(t *testing.T) {
	t.Parallel()
	_, js := natstest.Connect(t, natstest.Server(t))
	ctx := t.Context()
	s1, err := OpenStore(ctx, js, 1)
	require.NoError(t, err)
	s2, err := OpenStore(ctx, js, 1)
	require.NoError(t, err)
	a, b := New("slack-webhook", s1), New("slack-webhook", s2)
	go func() { _ = b.Watch(ctx) }()
	other := New("slack-api", s2)
	go func() { _ = other.Watch(ctx) }()

	a.RateLimited(ctx, 5*time.Second)
	natstest.Eventually(t, 5*time.Second, func() bool { return b.Acquire(ctx) > 4*time.Second }, "the other replica is not held")
	require.Zero(t, other.Acquire(ctx), "another destination is not held")
}

func TestBudgetIsShared(t *testing.T) {
	t.Parallel()
	_, js := natstest.Connect(t, natstest.Server(t))
	ctx := t.Context()
	s, err := OpenStore(ctx, js, 1)
	require.NoError(t, err)
	now := time.Now()
	a, b := NewBudget("d", s, 60, 3), NewBudget("d", s, 60, 3)
	took := 0
	for range 5 {
		for _, x := range []*Budget{a, b} {
			ok, err := x.Take(ctx, now)
			require.NoError(t, err)
			if ok {
				took++
			}
		}
	}
	require.Equal(t, 3, took, "two replicas share one burst")
	ok, err := a.Take(ctx, now.Add(500*time.Millisecond))
	require.NoError(t, err)
	require.False(t, ok, "a token a second: none yet")
	ok, err = b.Take(ctx, now.Add(1100*time.Millisecond))
	require.NoError(t, err)
	require.True(t, ok, "the next token")
	other := NewBudget("other", s, 60, 3)
	ok, err = other.Take(ctx, now)
	require.NoError(t, err)
	require.True(t, ok, "another destination has its own budget")
}
