package retry

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"
)

func TestDoBacksOffUntilSuccess(t *testing.T) {
	t.Parallel()
	calls := 0
	var delays []time.Duration
	err := Backoff{Initial: time.Millisecond, Max: 4 * time.Millisecond}.Do(t.Context(), func(context.Context) error {
		calls++
		if calls < 5 {
			return errors.New("not yet")
		}
		return nil
	}, func(_ error, d time.Duration) { delays = append(delays, d) })
	if err != nil {
		t.Fatal(err)
	}
	if got, want := calls, 5; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if got, want := delays, []time.Duration{time.Millisecond, 2 * time.Millisecond, 4 * time.Millisecond, 4 * time.Millisecond}; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestDoStopsOnPermanentAndCtx(t *testing.T) {
	t.Parallel()
	boom := errors.New("bad credentials")
	err := Backoff{Initial: time.Millisecond}.Do(t.Context(), func(context.Context) error { return Permanent(boom) }, nil)
	if got, want := err, boom; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}

	ctx, cancel := context.WithCancel(t.Context())
	retried := 0
	err = Backoff{Initial: time.Millisecond, Max: time.Millisecond}.Do(ctx, func(context.Context) error {
		return errors.New("down")
	}, func(error, time.Duration) {
		retried++
		if retried == 3 {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want %v", err, context.Canceled)
	}
	if got, want := retried, 3; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestDoResetsAfterALongAttempt(t *testing.T) {
	t.Parallel()
	calls := 0
	var delays []time.Duration
	_ = Backoff{Initial: time.Millisecond, Max: time.Second, ResetAfter: 20 * time.Millisecond}.Do(t.Context(), func(ctx context.Context) error {
		calls++
		if calls == 3 {
			Sleep(ctx, 25*time.Millisecond) // a connection that held
		}
		if calls == 5 {
			return nil
		}
		return errors.New("dropped")
	}, func(_ error, d time.Duration) { delays = append(delays, d) })
	if got, want := delays, []time.Duration{time.Millisecond, 2 * time.Millisecond, time.Millisecond, 2 * time.Millisecond}; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}
