package dockerevents

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/retry"
)

// API is the engine call of the stream.
type API interface {
	Events(ctx context.Context, options events.ListOptions) (<-chan events.Message, <-chan error)
}

// Handler is what the stream drives: the collector's set of containers.
type Handler interface {
	// Resync makes the set match the running containers; called after each
	// subscription, before its events are handled.
	Resync(ctx context.Context) error
	// Handle takes one event, in the engine's order.
	Handle(ctx context.Context, m events.Message)
}

// Reconnection back-off of the stream.
var backoff = retry.Backoff{Initial: 500 * time.Millisecond, Max: 30 * time.Second, ResetAfter: time.Minute}

// Stream follows the engine's event stream.
type Stream struct {
	docker     API
	log        *slog.Logger
	errors     prometheus.Counter // failed subscriptions and stream errors
	reconnects prometheus.Counter
	now        func() time.Time
}

// NewStream returns the stream of docker; errs counts failures, reconnects
// the reconnections.
func NewStream(docker API, log *slog.Logger, errs, reconnects prometheus.Counter) *Stream {
	return &Stream{docker: docker, log: log, errors: errs, reconnects: reconnects, now: time.Now}
}

// Run follows the stream until ctx ends, then returns nil. After an error it
// reconnects from the time of the last event it read (the engine replays
// from its buffer; replayed events keep their ids, so JetStream stores them
// once) and h re-lists the running containers, so that nothing started or
// stopped meanwhile is missed. The first subscription asks for no replay:
// the listing that follows it covers the past, and the collector's clock is
// never compared with a remote engine's.
func (s *Stream) Run(ctx context.Context, h Handler) error {
	var since time.Time // engine time of the last event read
	_ = backoff.Do(ctx, func(ctx context.Context) error {
		began := s.now()
		err := s.once(ctx, h, &since)
		if ctx.Err() != nil {
			return nil
		}
		if since.IsZero() {
			since = began // no event read yet: replay from when the stream opened
		}
		s.errors.Inc()
		return err
	}, func(err error, delay time.Duration) {
		s.log.Warn("docker event stream failed, reconnecting", "err", err, "since", since, "backoff", delay)
		s.reconnects.Inc()
	})
	return nil
}

// once subscribes, resyncs, then handles events until the stream fails or
// ctx ends, advancing since. It subscribes first, so a container that starts
// while the list is read is seen either way.
func (s *Stream) once(ctx context.Context, h Handler, since *time.Time) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	opts := events.ListOptions{Filters: filters.NewArgs(
		filters.Arg("type", string(events.ContainerEventType)),
		filters.Arg("type", string(events.ImageEventType)),
		filters.Arg("type", string(events.NetworkEventType)),
	)}
	if !since.IsZero() {
		opts.Since = fmt.Sprintf("%d.%09d", since.Unix(), since.Nanosecond())
	}
	msgs, errs := s.docker.Events(sctx, opts)
	if err := h.Resync(ctx); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errs:
			if err == nil {
				err = io.EOF
			}
			return err
		case m := <-msgs:
			h.Handle(ctx, m)
			if t := EventTime(m); t.After(*since) {
				*since = t
			}
		}
	}
}
