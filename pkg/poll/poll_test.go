package poll

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// syncBuffer is a log sink safe for the loop's goroutine and the test's.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestLoopWarnsOnceAndLogsRecovery(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	failures := prometheus.NewCounter(prometheus.CounterOpts{Name: "f"})
	// fail, fail, fail, ok, fail, ok, stop
	script := []error{errors.New("a"), errors.New("b"), errors.New("c"), nil, errors.New("d"), nil, ErrStop}
	calls := 0
	err := Loop{What: "thing", Interval: time.Millisecond, Log: slog.New(slog.NewTextHandler(&logs, nil)), Failures: failures}.
		Run(t.Context(), func(context.Context) error {
			e := script[calls]
			calls++
			return e
		})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := calls, len(script); !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if got, want := testutil.ToFloat64(failures), 4.0; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	out := logs.String()
	if got, want := strings.Count(out, "thing failed"), 2; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if !strings.Contains(out, "err=a") {
		t.Fatalf("log lacks %s: %s", "err=a", out)
	}
	if strings.Contains(out, "err=b") {
		t.Fatalf("log has %s: %s", "err=b", out)
	}
	if !strings.Contains(out, "err=d") {
		t.Fatalf("log lacks %s: %s", "err=d", out)
	}
	if got, want := strings.Count(out, "thing recovered"), 2; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if !strings.Contains(out, "failures=3") {
		t.Fatalf("log lacks %s: %s", "failures=3", out)
	}
}

func TestLoopFirstLookAtOnceAndStopsWithCtx(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	looked := make(chan struct{}, 1)
	done := make(chan error)
	go func() {
		done <- Loop{What: "x", Interval: time.Hour}.Run(ctx, func(ctx context.Context) error {
			looked <- struct{}{}
			return nil
		})
	}()
	select {
	case <-looked:
	case <-time.After(10 * time.Second):
		t.Fatal("no first look")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("loop did not stop")
	}
}

func TestLoopFatalAndAdaptiveInterval(t *testing.T) {
	t.Parallel()
	boom := errors.New("permission denied")
	calls := 0
	var asked []time.Duration
	err := Loop{What: "x", Interval: time.Hour, Next: func() time.Duration {
		d := time.Millisecond // fast after the first look, else the test would wait an hour
		asked = append(asked, d)
		return d
	}}.Run(t.Context(), func(context.Context) error {
		calls++
		if calls == 3 {
			return Fatal(boom)
		}
		return nil
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want %v", err, boom)
	}
	if got, want := calls, 3; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if len(asked) != 2 {
		t.Fatalf("len = %d, want 2", len(asked))
	}
}

func TestPhaseSpreads(t *testing.T) {
	t.Parallel()
	if v := Phase("a", 0); v != 0 {
		t.Fatal(v)
	}
	seen := map[time.Duration]bool{}
	for _, k := range []string{"a", "b", "c", "d", "e", "f"} {
		p := Phase(k, time.Minute)
		if !(p >= 0 && p < time.Minute) {
			t.Fatal(p)
		}
		if got, want := Phase(k, time.Minute), p; got != want { // stable
			t.Fatalf("got %v, want %v", got, want)
		}
		seen[p] = true
	}
	if len(seen) <= 3 {
		t.Fatal(len(seen))
	}
}

// Without an Interval the loop looks once, then only when its Signal fires;
// every loop waiting on the Signal looks again, once per Fire.
func TestLoopWakesOnSignalOnly(t *testing.T) {
	t.Parallel()
	var sig Signal
	const loops = 3
	looks := make(chan int, 16)
	for i := range loops {
		go func() {
			_ = Loop{What: "x", Wake: sig.C}.Run(t.Context(), func(ctx context.Context) error {
				looks <- i
				return nil
			})
		}()
	}
	want := func(n int) {
		t.Helper()
		for range n {
			select {
			case <-looks:
			case <-time.After(10 * time.Second):
				t.Fatalf("fewer than %d looks", n)
			}
		}
	}
	want(loops) // the first looks
	select {
	case i := <-looks:
		t.Fatalf("loop %d looked again without an Interval or a Fire", i)
	case <-time.After(100 * time.Millisecond):
	}
	// A loop takes C before its refresh, so a Fire from then on wakes it;
	// fire until each has looked again (one may still be between its look
	// and its C when the first Fire comes).
	again := map[int]bool{}
	for deadline := time.Now().Add(10 * time.Second); len(again) < loops; {
		if time.Now().After(deadline) {
			t.Fatalf("only loops %v looked again after Fire", again)
		}
		sig.Fire()
		select {
		case i := <-looks:
			again[i] = true
		case <-time.After(50 * time.Millisecond):
		}
	}
}
