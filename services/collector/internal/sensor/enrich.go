package sensor

import (
	"time"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// enricher adds the container's metadata to events. An event of a container
// the collector does not know yet (its create event is still on the way)
// waits up to wait, behind the earlier waiting events of the same container
// (order per container is kept), then goes with the container id alone.
// At most max events wait; beyond that an event goes at once. Not safe for
// concurrent use.
type enricher struct {
	containers Containers
	wait       time.Duration
	max        int
	pending    []pendingEvent
	waiting    map[string]int // container id -> its events in pending
	lastFlush  time.Time
	waited     func() // metrics hook: an event had to wait
}

type pendingEvent struct {
	e        *event.Event
	deadline time.Time
}

func newEnricher(c Containers, wait time.Duration, max int) *enricher {
	return &enricher{containers: c, wait: wait, max: max, waiting: map[string]int{}}
}

func (q *enricher) lookup(e *event.Event, force bool) bool {
	c, ok := q.containers.Container(e.Container.ID)
	if ok {
		c.ID = e.Container.ID
		e.Container = &c
	}
	return ok || force
}

// add emits e now when its container is known and none of its events wait,
// else queues it.
func (q *enricher) add(e *event.Event, now time.Time, out func(*event.Event)) {
	id := e.Container.ID
	if len(q.pending) >= q.max {
		// Bounded memory over order: the queue is full.
		q.lookup(e, true)
		out(e)
		return
	}
	if q.waiting[id] == 0 && q.lookup(e, false) {
		out(e)
		return
	}
	if q.waited != nil {
		q.waited()
	}
	q.waiting[id]++
	q.pending = append(q.pending, pendingEvent{e: e, deadline: now.Add(q.wait)})
}

// flush emits the waiting events whose container became known or whose
// wait is over, in order per container. It looks at most every minGap.
func (q *enricher) flush(now time.Time, minGap time.Duration, out func(*event.Event)) {
	if len(q.pending) == 0 || now.Sub(q.lastFlush) < minGap {
		return
	}
	q.lastFlush = now
	kept := q.pending[:0]
	blocked := map[string]bool{}
	clear(q.waiting)
	for _, p := range q.pending {
		id := p.e.Container.ID
		if !blocked[id] && q.lookup(p.e, !now.Before(p.deadline)) {
			out(p.e)
			continue
		}
		blocked[id] = true
		q.waiting[id]++
		kept = append(kept, p)
	}
	clear(q.pending[len(kept):])
	q.pending = kept
}

// drain emits every waiting event (shutdown), enriched where possible.
func (q *enricher) drain(out func(*event.Event)) {
	for _, p := range q.pending {
		q.lookup(p.e, true)
		out(p.e)
	}
	q.pending = nil
	clear(q.waiting)
}
