package sensor

import (
	"time"

	"golang.org/x/sys/unix"
)

// clock converts the kernel's CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns,
// task start times) to wall-clock time.
type clock struct {
	offset int64 // wall ns - monotonic ns
}

// newClock measures the offset between the clocks: of a few readings of
// the wall clock bracketed by two of the monotonic one, the tightest wins (a
// reader preempted between two readings would be off by the preemption).
func newClock() clock {
	var best, bestGap int64 = 0, -1
	for range 16 {
		var a, b unix.Timespec
		_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &a)
		wall := time.Now().UnixNano()
		_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &b)
		if gap := b.Nano() - a.Nano(); bestGap < 0 || gap < bestGap {
			best, bestGap = wall-(a.Nano()+b.Nano())/2, gap
		}
	}
	return clock{offset: best}
}

func (c clock) wall(mono uint64) time.Time {
	if mono == 0 {
		return time.Time{}
	}
	return time.Unix(0, int64(mono)+c.offset).UTC()
}
