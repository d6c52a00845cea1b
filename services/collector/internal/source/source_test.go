package source

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestUntilTick(t *testing.T) {
	t.Parallel()
	base := time.Unix(1_700_000_010, 0) // a whole number of 30 s, 5 s and 100 ms
	tests := []struct {
		name  string
		now   time.Time
		every time.Duration
		want  time.Duration
	}{
		{"on a tick: a whole period", base, 30 * time.Second, 30 * time.Second},
		{"just after a tick", base.Add(time.Nanosecond), 30 * time.Second, 30*time.Second - time.Nanosecond},
		{"just before a tick", base.Add(-time.Millisecond), 30 * time.Second, time.Millisecond},
		{"mid-period", base.Add(12 * time.Second), 30 * time.Second, 18 * time.Second},
		{"short period", base.Add(30 * time.Millisecond), 100 * time.Millisecond, 70 * time.Millisecond},
		{"other zone, same instant", base.Add(2 * time.Second).In(time.FixedZone("x", 3600+1800)), 5 * time.Second, 3 * time.Second},
		{"no period", base.Add(time.Second), 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, UntilTick(tt.now, tt.every))
		})
	}
	// Two containers started apart wake at the same instants.
	a, b := base.Add(3*time.Second+17*time.Millisecond), base.Add(21*time.Second+5*time.Microsecond)
	require.Equal(t, a.Add(UntilTick(a, 30*time.Second)), b.Add(UntilTick(b, 30*time.Second)))
}
