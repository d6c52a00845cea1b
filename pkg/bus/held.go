package bus

import (
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// held is the set of messages a consumer holds: pulled, not yet settled,
// whether a handler has them or they wait in the consumer's buffer. While a
// message is held it gets an in-progress ack every third of AckWait, so
// that the server redelivers nothing a live consumer holds however long it
// takes. AckWait is then only how long the server waits for what no live
// consumer holds: a crashed consumer's messages, and a message a dying
// consumer leader had sent that never arrived (the new leader knows it as
// delivered and redelivers it AckWait after the first delivery). So
// AckWait can be short, and a failover costs the election rather than a
// long AckWait.
type held struct {
	every time.Duration
	mu    sync.Mutex
	// msgs maps each held message to when the server last heard of it
	// (delivery or in-progress ack).
	msgs map[jetstream.Msg]time.Time
	// timer runs while msgs is not empty: an idle consumer has no ticker.
	timer *time.Timer
	// space is signalled when a message leaves.
	space chan struct{}
}

func newHeld(ackWait time.Duration) *held {
	return &held{
		every: max(ackWait/3, 100*time.Millisecond),
		msgs:  map[jetstream.Msg]time.Time{},
		space: make(chan struct{}, 1),
	}
}

// add holds m from now on.
func (h *held) add(m jetstream.Msg) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.msgs[m] = time.Now()
	if h.timer == nil {
		h.timer = time.AfterFunc(h.every, h.tick)
	}
}

// done releases m once it is settled (or given up).
func (h *held) done(m jetstream.Msg) {
	h.mu.Lock()
	delete(h.msgs, m)
	h.mu.Unlock()
	select {
	case h.space <- struct{}{}:
	default:
	}
}

// len is the number of messages held.
func (h *held) len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.msgs)
}

// tick sends an in-progress ack for every message the server has not heard
// of for half a period or more, so none goes longer than AckWait/2 unheard.
func (h *held) tick() {
	now := time.Now()
	var due []jetstream.Msg
	h.mu.Lock()
	for m, last := range h.msgs {
		if now.Sub(last) >= h.every/2 {
			due = append(due, m)
			h.msgs[m] = now
		}
	}
	if len(h.msgs) == 0 {
		h.timer = nil
	} else {
		h.timer.Reset(h.every)
	}
	h.mu.Unlock()
	for _, m := range due {
		// A failed in-progress ack (no connection) is retried at the
		// next tick; the server redelivers at worst.
		_ = m.InProgress()
	}
}

// stop forgets every message and stops the timer.
func (h *held) stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	clear(h.msgs)
	if h.timer != nil {
		h.timer.Stop()
		h.timer = nil
	}
}
