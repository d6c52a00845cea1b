package partition

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/bus"
)

// SourceJetStream is what WatchSource needs: stream info, and the
// connection for the leader step-down request, which nats.go's jetstream
// API does not offer.
type SourceJetStream interface {
	Stream(ctx context.Context, name string) (jetstream.Stream, error)
	Conn() *nats.Conn
}

// Timings of WatchSource.
const (
	// watchEvery is how often the source is looked at. Its consumer sends
	// a heartbeat every second, so a healthy source was heard from within
	// about a second.
	watchEvery = 500 * time.Millisecond
	// watchTimeout bounds each request the watcher makes: longer than a
	// look's period, as a loaded JetStream API answers in seconds.
	watchTimeout = 3 * time.Second
	// stallAfter is how long the source may stay unheard before its
	// stream's leader is moved: two missed heartbeats. A false alarm costs
	// a step-down (the copy pauses for well under a second).
	stallAfter = 2 * time.Second
	// moveGrace is the least time between two moves by one replica. A
	// new leader's source can stall again (its request reached a
	// telemetry leader that was not ready to answer), so the grace is
	// short; each move costs well under a second of copying.
	moveGrace = 2 * stallAfter
)

// WatchSource keeps Stream's copy of telemetry flowing through NATS leader
// changes, until ctx ends.
//
// Stream's leader runs the source: an internal consumer on the telemetry
// stream, created by a request to the telemetry stream's leader. When that
// leader dies (or both streams' leaders die together, as when one node led
// both), the request goes unanswered during the election, and nats-server
// waits 30 s for the answer, then backs off 10 s, 20 s, ... before asking
// again: telemetry then reaches no partition for 35-50 s, though every
// partition consumer runs. A new leader of Stream sets the source up at
// once. So when the source has not been heard from for stallAfter (its
// heartbeat is every second) while the telemetry stream has a leader, the
// watcher asks Stream's leader to step down. Several replicas may watch:
// each starts counting again when the leader changes, so one move serves
// them all. Nothing is lost or copied twice by the move: the new leader
// resumes after the last sequence it stored (Stream deduplicates).
//
// The cost is two stream info requests per replica per second, independent
// of the number of hosts or partitions.
func WatchSource(ctx context.Context, js SourceJetStream, log *slog.Logger, reg prometheus.Registerer) {
	moves := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "whalewatch_detector_source_restarts_total",
		Help: "Times this replica moved the partitioned stream's leader because its source of telemetry had stalled.",
	})
	reg.MustRegister(moves)
	w := watch{stallAfter: stallAfter, grace: moveGrace}
	tick := time.NewTicker(watchEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		leader, active, err := sourceState(ctx, js)
		if err != nil {
			log.Debug("watching the partitioned stream's source", "err", err)
			continue
		}
		if !w.observe(time.Now(), leader, active) {
			continue
		}
		// A new leader asks the telemetry stream's leader at once: worth
		// it only when there is one to answer.
		if err := hasLeader(ctx, js, bus.StreamTelemetry); err != nil {
			log.Debug("partitioned stream's source stalled; telemetry has no leader yet", "err", err)
			continue
		}
		w.moved(time.Now())
		if err := stepDown(ctx, js.Conn(), Stream); err != nil {
			log.Warn("partitioned stream's source of telemetry stalled; moving the stream's leader failed", "leader", leader, "err", err)
			continue
		}
		moves.Inc()
		log.Warn("partitioned stream's source of telemetry stalled; moved the stream's leader so that a new one restarts it",
			"leader", leader, "unheard_for", w.unheard(time.Now(), active).Round(100*time.Millisecond))
	}
}

// sourceState returns Stream's leader and how long ago its source of
// telemetry was last heard from (-1: not since this leader started it).
func sourceState(ctx context.Context, js SourceJetStream) (leader string, active time.Duration, err error) {
	ictx, cancel := context.WithTimeout(ctx, watchTimeout)
	defer cancel()
	st, err := js.Stream(ictx, Stream)
	if err != nil {
		return "", 0, fmt.Errorf("stream %s: %w", Stream, err)
	}
	info := st.CachedInfo()
	if info.Cluster != nil {
		leader = info.Cluster.Leader
	}
	for _, s := range info.Sources {
		if s.Name == bus.StreamTelemetry {
			if s.Error != nil {
				return leader, -1, nil
			}
			return leader, s.Active, nil
		}
	}
	return "", 0, fmt.Errorf("stream %s has no source %s", Stream, bus.StreamTelemetry)
}

// hasLeader returns nil when stream's leader answers an info request.
func hasLeader(ctx context.Context, js SourceJetStream, stream string) error {
	ictx, cancel := context.WithTimeout(ctx, watchTimeout)
	defer cancel()
	st, err := js.Stream(ictx, stream)
	if err != nil {
		return err
	}
	if c := st.CachedInfo().Cluster; c != nil && c.Leader == "" {
		return fmt.Errorf("stream %s has no leader", stream)
	}
	return nil
}

// stepDown asks stream's leader to hand leadership to another replica.
func stepDown(ctx context.Context, nc *nats.Conn, stream string) error {
	rctx, cancel := context.WithTimeout(ctx, watchTimeout)
	defer cancel()
	resp, err := nc.RequestWithContext(rctx, "$JS.API.STREAM.LEADER.STEPDOWN."+stream, nil)
	if err != nil {
		return fmt.Errorf("stepping down the leader of %s: %w", stream, err)
	}
	var r struct {
		Error *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(resp.Data, &r); err != nil {
		return fmt.Errorf("stepping down the leader of %s: %w", stream, err)
	}
	if r.Error != nil {
		return fmt.Errorf("stepping down the leader of %s: %w", stream, r.Error)
	}
	return nil
}

// watch decides when the source has stalled, from successive looks.
type watch struct {
	stallAfter, grace time.Duration
	leader            string
	// since is the first look of this leader's source not yet heard from
	// (active -1); zero otherwise.
	since time.Time
	// last is when this watcher last moved the leader.
	last time.Time
}

// observe records a look at the source at now (leader, and active as
// sourceState returns it) and reports whether the leader should be moved.
func (w *watch) observe(now time.Time, leader string, active time.Duration) bool {
	if leader != w.leader {
		// A new leader starts its source afresh: give it its own time,
		// even if the previous one had stalled.
		w.leader, w.since = leader, time.Time{}
		if active < 0 {
			w.since = now
		}
		return false
	}
	if active >= 0 {
		w.since = time.Time{}
	} else if w.since.IsZero() {
		w.since = now
	}
	if w.unheard(now, active) < w.stallAfter {
		return false
	}
	return w.last.IsZero() || now.Sub(w.last) >= w.grace
}

// unheard is how long the source has not been heard from, as far as this
// watcher knows.
func (w *watch) unheard(now time.Time, active time.Duration) time.Duration {
	if active >= 0 {
		return active
	}
	return now.Sub(w.since)
}

// moved records a move at now.
func (w *watch) moved(now time.Time) { w.last = now }
