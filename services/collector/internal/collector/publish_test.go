package collector

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// fakePublisher fails the first failures publishes, blocks while gate is
// set, and records what it stored by subject.
type fakePublisher struct {
	mu       sync.Mutex
	failures int
	gate     chan struct{}
	subjects []string
	ids      []string
}

func (p *fakePublisher) Publish(ctx context.Context, subj string, e *event.Event) error {
	if p.gate != nil {
		select {
		case <-p.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.failures > 0 {
		p.failures--
		return errors.New("nats: no responders")
	}
	p.subjects = append(p.subjects, subj)
	p.ids = append(p.ids, e.Event.ID)
	return nil
}

func newTestQueue(t *testing.T, size int, pub eventPublisher) (*queue, *metrics) {
	t.Helper()
	m := newMetrics(prometheus.NewRegistry(), func() float64 { return 0 })
	return newQueue(size, pub, m, slog.New(slog.NewTextHandler(io.Discard, nil))), m
}

func telemetry(id string) *event.Event {
	return &event.Event{
		Event:      event.Meta{ID: id, Kind: event.KindEvent},
		Host:       event.Host{Name: "h"},
		Container:  &event.Container{ID: "c1"},
		Whalewatch: event.Whalewatch{SchemaVersion: event.SchemaVersion, Telemetry: event.TelemetryProcess},
	}
}

func TestQueuePublishesInOrderAndRetries(t *testing.T) {
	t.Parallel()
	pub := &fakePublisher{failures: 2}
	q, m := newTestQueue(t, 10, pub)
	for _, id := range []string{"a", "b", "c"} {
		q.enqueue(telemetry(id))
	}
	q.close()
	q.run(t.Context())
	require.Equal(t, []string{"a", "b", "c"}, pub.ids)
	require.Equal(t, "whalewatch.telemetry.h.c1.process", pub.subjects[0])
	require.Equal(t, 2.0, testutil.ToFloat64(m.publishRetries))
	require.Equal(t, 3.0, testutil.ToFloat64(m.events.WithLabelValues("process")))
	require.Equal(t, 0.0, testutil.ToFloat64(m.dropped.WithLabelValues("queue_full")))
}

func TestQueueDropsWhenFull(t *testing.T) {
	t.Parallel()
	q, m := newTestQueue(t, 2, &fakePublisher{})
	for _, id := range []string{"a", "b", "c", "d"} {
		q.enqueue(telemetry(id)) // nothing drains: the last two find it full
	}
	require.Equal(t, 2.0, testutil.ToFloat64(m.dropped.WithLabelValues("queue_full")))
	require.Equal(t, 2.0, testutil.ToFloat64(m.events.WithLabelValues("process")))
}

func TestQueueBoundsEvents(t *testing.T) {
	t.Parallel()
	q, m := newTestQueue(t, 2, &fakePublisher{})
	e := telemetry("a")
	e.Process = &event.Process{CommandLine: strings.Repeat("A", 2*event.MaxCommandLine)}
	q.enqueue(e)
	require.LessOrEqual(t, len(e.Process.CommandLine), event.MaxCommandLine)
	require.Equal(t, 1.0, testutil.ToFloat64(m.truncated))
}

func TestQueueShutdownTimeoutDropsTheRest(t *testing.T) {
	t.Parallel()
	pub := &fakePublisher{gate: make(chan struct{})} // NATS never answers
	q, m := newTestQueue(t, 10, pub)
	q.enqueue(telemetry("a"))
	q.enqueue(telemetry("b"))
	q.close()
	ctx, cancel := context.WithCancel(t.Context())
	cancel() // the shutdown timeout has passed
	q.run(ctx)
	require.Equal(t, 2.0, testutil.ToFloat64(m.dropped.WithLabelValues("shutdown")))
	require.Empty(t, pub.ids)
}

func TestSometimes(t *testing.T) {
	t.Parallel()
	s := sometimes{period: 1 << 62}
	var calls, held []int
	for range 5 {
		s.do(func(h int) { calls = append(calls, 1); held = append(held, h) })
	}
	require.Len(t, calls, 1, "at most once per period")
	require.Equal(t, []int{0}, held)
	s.last = s.last.Add(-(1 << 62))
	s.do(func(h int) { held = append(held, h) })
	require.Equal(t, []int{0, 4}, held, "then reports what it held back")
}
