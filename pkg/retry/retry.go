// Package retry holds the one back-off loop of whalewatch: connecting,
// reconnecting and retrying a call are written once, here, and every caller
// supplies only the attempt.
package retry

import (
	"context"
	"errors"
	"time"
)

// Backoff is an exponential back-off: the first delay is Initial, each
// failure doubles it up to Max.
type Backoff struct {
	Initial time.Duration
	Max     time.Duration
	// ResetAfter: an attempt that ran at least this long before it failed
	// (a connection that held) starts the delays from Initial again. 0:
	// never.
	ResetAfter time.Duration
}

// permanent marks an error that must not be retried.
type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }

// Permanent wraps err so that Do returns it at once (unwrapped) instead of
// trying again.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanent{err}
}

// Do calls attempt until it returns nil or a Permanent error, or ctx ends.
// Between attempts it waits the back-off delay; onRetry (nil: nothing) is
// told each failure and the delay before the next attempt, so that the
// caller logs and counts as it sees fit. Failures caused by ctx ending are
// not reported. It returns nil, the permanent error, or ctx's error.
func (b Backoff) Do(ctx context.Context, attempt func(ctx context.Context) error, onRetry func(err error, delay time.Duration)) error {
	initial := b.Initial
	if initial <= 0 {
		initial = 100 * time.Millisecond
	}
	maxDelay := max(b.Max, initial)
	delay := initial
	for {
		began := time.Now()
		err := attempt(ctx)
		if err == nil {
			return nil
		}
		if p, ok := errors.AsType[permanent](err); ok {
			return p.err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if b.ResetAfter > 0 && time.Since(began) >= b.ResetAfter {
			delay = initial
		}
		if onRetry != nil {
			onRetry(err, delay)
		}
		if !Sleep(ctx, delay) {
			return ctx.Err()
		}
		delay = min(delay*2, maxDelay)
	}
}

// Sleep waits d or until ctx ends, reporting whether d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
