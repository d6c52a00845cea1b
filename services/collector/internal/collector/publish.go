package collector

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/retry"
	"github.com/whalewatch/whalewatch/pkg/subject"
)

// eventPublisher is what the queue publishes with (bus.EventPublisher).
type eventPublisher interface {
	Publish(ctx context.Context, subj string, e *event.Event) error
}

var _ eventPublisher = (*bus.EventPublisher)(nil)

// queue decouples the Docker watchers, which must never block on NATS, from
// publishing: a bounded buffer drained by one goroutine, which keeps the
// events of a container in the order they were seen. When the buffer is full
// new events are dropped and counted: a NATS outage longer than the buffer
// loses telemetry rather than stalling the engine's event stream.
type queue struct {
	ch               chan *event.Event
	pub              eventPublisher
	m                *metrics
	log              *slog.Logger
	dropLog, failLog sometimes
}

func newQueue(size int, pub eventPublisher, m *metrics, log *slog.Logger) *queue {
	q := &queue{
		ch:      make(chan *event.Event, size),
		pub:     pub,
		m:       m,
		log:     log,
		dropLog: sometimes{period: 10 * time.Second},
		failLog: sometimes{period: 30 * time.Second},
	}
	return q
}

// enqueue bounds e's attacker-controlled fields and queues it without
// blocking. It must not be called after close.
func (q *queue) enqueue(e *event.Event) {
	if e.Bound() {
		q.m.truncated.Inc()
	}
	select {
	case q.ch <- e:
		q.m.events.WithLabelValues(string(e.Whalewatch.Telemetry)).Inc()
	default:
		q.m.dropped.WithLabelValues("queue_full").Inc()
		q.dropLog.do(func(held int) {
			q.log.Warn("publish queue full, dropping events", "capacity", cap(q.ch), "dropped_since_last_log", held+1)
		})
	}
}

// close ends the queue once every producer has stopped.
func (q *queue) close() { close(q.ch) }

// run publishes until the queue is closed and empty. ctx bounds publishing:
// after it ends, what is left is dropped and counted (reason shutdown).
func (q *queue) run(ctx context.Context) {
	lost := 0
	for e := range q.ch {
		if err := q.publish(ctx, e); err != nil {
			q.m.dropped.WithLabelValues("shutdown").Inc()
			lost++
		}
	}
	if lost > 0 {
		q.log.Warn("shutdown timeout: events not published", "count", lost)
	}
}

// publish retries with backoff until JetStream stores e or ctx ends. The
// event keeps its id across retries, so a retry after a lost ack is stored once.
func (q *queue) publish(ctx context.Context, e *event.Event) error {
	subj := subject.ForTelemetry(e)
	return publishBackoff.Do(ctx, func(ctx context.Context) error {
		return q.pub.Publish(ctx, subj, e)
	}, func(err error, _ time.Duration) {
		q.m.publishRetries.Inc()
		q.failLog.do(func(held int) {
			q.log.Warn("publishing failed, retrying", "subject", subj, "err", err, "failures_since_last_log", held+1)
		})
	})
}

// publishBackoff spaces the retries of one publish.
var publishBackoff = retry.Backoff{Initial: 100 * time.Millisecond, Max: 5 * time.Second}

// sometimes runs f at most once per period and tells it how many calls it
// held back since, so a flood produces one log line per period.
type sometimes struct {
	period time.Duration
	mu     sync.Mutex
	last   time.Time
	held   int
}

func (s *sometimes) do(f func(held int)) {
	s.mu.Lock()
	now := time.Now()
	if !s.last.IsZero() && now.Sub(s.last) < s.period {
		s.held++
		s.mu.Unlock()
		return
	}
	held := s.held
	s.last, s.held = now, 0
	s.mu.Unlock()
	f(held)
}
