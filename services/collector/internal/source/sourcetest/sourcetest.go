// Package sourcetest holds what the sources' tests share: a recorder of
// emitted events and a quiet logger.
package sourcetest

import (
	"io"
	"log/slog"
	"sync"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// Recorder records emitted events; safe for concurrent use.
type Recorder struct {
	mu sync.Mutex
	es []*event.Event
}

// Emit records e (a source.Emit).
func (r *Recorder) Emit(e *event.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.es = append(r.es, e)
}

// All returns a copy of what was recorded.
func (r *Recorder) All() []*event.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*event.Event(nil), r.es...)
}

// Log is a logger that writes nowhere.
func Log() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
