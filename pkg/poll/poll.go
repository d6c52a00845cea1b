// Package poll holds the one poll loop of whalewatch (after prometheus's
// discovery/refresh): a source supplies only its refresh; the loop looks at
// once, then on a ticker, warns once when refreshes start failing, says when
// they recover, counts failures and never logs what ctx's end caused.
package poll

import (
	"context"
	"errors"
	"hash/fnv"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/retry"
)

// ErrStop returned by a refresh ends the loop without an error (the thing
// polled is gone, or one look was all that was asked).
var ErrStop = errors.New("poll: stop")

// Loop is one poller's settings.
type Loop struct {
	// What names what is polled in log messages ("docker diff").
	What string
	// Interval between the starts of two refreshes; 0: none on a timer,
	// only the first and those Wake asks for.
	Interval time.Duration
	// Wake, when set, refreshes early when the channel it returns is
	// closed (a Signal's C): a source that learns that it missed something
	// looks again at once.
	Wake func() <-chan struct{}
	// Phase delays the first refresh (many pollers started together spread
	// over the interval; see Phase). 0: at once.
	Phase time.Duration
	// Next, when set, is asked after every refresh for the interval until
	// the next one (adaptive polling); it returns Interval to go back.
	Next func() time.Duration
	// Log receives the failure and recovery messages (with the caller's
	// attributes, e.g. the container id).
	Log *slog.Logger
	// Failures counts failed refreshes; nil: not counted.
	Failures prometheus.Counter
}

// Run calls refresh after Phase, then every Interval, until ctx ends or
// refresh returns ErrStop. The first failure of a run of failures is logged
// at warning level with its error, the others are counted only; the first
// success after them is logged at info level. Run returns nil when ctx ends
// or on ErrStop, and refresh's error when it wraps a permanent failure made
// with Fatal.
func (l Loop) Run(ctx context.Context, refresh func(ctx context.Context) error) error {
	if !retry.Sleep(ctx, l.Phase) {
		return nil
	}
	interval := l.Interval
	var tick *time.Ticker
	var ticks <-chan time.Time // nil without an Interval: never
	if interval > 0 {
		tick = time.NewTicker(interval)
		defer tick.Stop()
		ticks = tick.C
	}
	failures := 0
	for {
		var wake <-chan struct{}
		if l.Wake != nil {
			wake = l.Wake() // before the refresh: a wake-up during it is not lost
		}
		err := refresh(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, ErrStop):
			return nil
		case errors.As(err, new(fatal)):
			return errors.Unwrap(err)
		case err != nil:
			if l.Failures != nil {
				l.Failures.Inc()
			}
			if failures == 0 && l.Log != nil {
				l.Log.Warn(l.What+" failed", "err", err)
			}
			failures++
		case failures > 0:
			if l.Log != nil {
				l.Log.Info(l.What+" recovered", "failures", failures)
			}
			failures = 0
		}
		if l.Next != nil && tick != nil {
			if next := l.Next(); next > 0 && next != interval {
				interval = next
				tick.Reset(interval)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticks:
		case <-wake:
		}
	}
}

// Signal wakes every Loop whose Wake is its C at once: a broadcast that
// can fire any number of times (the kernel sensor, having lost records,
// wakes every container's docker diff reconciliation). The zero Signal is
// ready to use.
type Signal struct {
	mu sync.Mutex
	ch chan struct{}
}

// C returns the channel the next Fire closes.
func (s *Signal) C() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch == nil {
		s.ch = make(chan struct{})
	}
	return s.ch
}

// Fire wakes everyone waiting on a channel C returned so far.
func (s *Signal) Fire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch != nil {
		close(s.ch)
		s.ch = nil
	}
}

type fatal struct{ err error }

func (f fatal) Error() string { return f.err.Error() }
func (f fatal) Unwrap() error { return f.err }

// Fatal wraps err so that Run stops and returns err: a failure that the next
// refresh cannot mend (permission denied).
func Fatal(err error) error { return fatal{err} }

// Phase is a fixed fraction of interval derived from key: pollers of many
// things started together (every container at collector start) that wait
// their phase before their first look spread over the interval instead of
// hitting the engine at once.
func Phase(key string, interval time.Duration) time.Duration {
	if interval <= 0 {
		return 0
	}
	h := fnv.New64a()
	h.Write([]byte(key))
	return time.Duration(h.Sum64() % uint64(interval))
}
