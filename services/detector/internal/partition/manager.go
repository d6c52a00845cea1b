package partition

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/bus"
)

// ConsumeFunc consumes partition p until ctx ends, then finishes (acks or
// naks) what it was handed and returns.
type ConsumeFunc func(ctx context.Context, p int) error

// Hooks observe ownership changes (metrics, state, tests). Acquired runs
// before the partition's consumer starts; Released after it returned.
type Hooks struct {
	Acquired func(p int)
	Released func(p int)
}

// OpenLeases opens the lease bucket with the given TTL, creating or
// updating it (bus.EnsureKeyValue: deadlines sized for a cluster, retried
// until ctx ends; onErr, may be nil, sees each failed try).
func OpenLeases(ctx context.Context, js bus.KeyValueManager, ttl time.Duration, replicas int, onErr func(error)) (jetstream.KeyValue, error) {
	kv, err := bus.EnsureKeyValue(ctx, js, jetstream.KeyValueConfig{
		Bucket:      LeaseBucket,
		Description: "whalewatch detector: live replicas and partition locks",
		TTL:         ttl,
		Storage:     jetstream.MemoryStorage,
		Replicas:    replicas,
	}, onErr)
	if err != nil {
		return nil, fmt.Errorf("opening KV bucket %s: %w", LeaseBucket, err)
	}
	return kv, nil
}

// Manager holds this replica's share of the partitions.
type Manager struct {
	cfg     Config
	id      string
	kv      jetstream.KeyValue
	consume ConsumeFunc
	hooks   Hooks
	log     *slog.Logger
	owned   prometheus.Gauge
	moves   *prometheus.CounterVec

	held map[int]*lease
}

type lease struct {
	rev uint64
	// renewed is when the lock's last successful write was sent: the
	// server expires the lock no earlier than LeaseTTL after it.
	renewed time.Time
	// fence stops the consumer when the lock has not been renewed for most
	// of the TTL, whatever the round is blocked on.
	fence *time.Timer
	stop  context.CancelFunc
	done  chan error
}

// NewManager returns a manager for replica id over the lease bucket kv.
func NewManager(cfg Config, id string, kv jetstream.KeyValue, consume ConsumeFunc, hooks Hooks, log *slog.Logger, reg prometheus.Registerer) *Manager {
	m := &Manager{
		cfg: cfg, id: id, kv: kv, consume: consume, hooks: hooks, log: log.With("replica", id),
		owned: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "whalewatch_detector_partitions_owned",
			Help: "Telemetry partitions this replica consumes.",
		}),
		moves: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whalewatch_detector_partition_changes_total",
			Help: "Partition ownership changes of this replica, by change (acquired, released, lost).",
		}, []string{"change"}),
		held: map[int]*lease{},
	}
	reg.MustRegister(m.owned, m.moves)
	return m
}

// Run takes part in partition ownership until ctx ends, then releases every
// partition (after its consumer finished) and leaves.
func (m *Manager) Run(ctx context.Context) error {
	tick := time.NewTicker(m.cfg.LeaseTTL / 4)
	defer tick.Stop()
	defer m.leave()
	for {
		if err := m.step(ctx); err != nil && ctx.Err() == nil {
			m.log.Warn("partition lease round failed, will retry", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// Owned returns the partitions held, sorted.
func (m *Manager) Owned() []int {
	return slices.Sorted(func(yield func(int) bool) {
		for p := range m.held {
			if !yield(p) {
				return
			}
		}
	})
}

func memberKey(id string) string { return "members." + id }
func lockKey(p int) string       { return "locks." + strconv.Itoa(p) }

// opTimeout bounds one KV request of a round, so that rounds go on while
// the lease bucket has no leader (a NATS node died).
func (m *Manager) opTimeout() time.Duration { return m.cfg.LeaseTTL / 2 }

// fenceAfter is how long after a lock's last successful write was sent its
// partition is consumed without a renewal: the server expires the lock no
// earlier than the TTL after it, and the last quarter of the TTL is the
// margin for stopping the consumer.
func (m *Manager) fenceAfter() time.Duration { return m.cfg.LeaseTTL - m.cfg.LeaseTTL/4 }

func (m *Manager) fenced(renewed time.Time) bool { return time.Since(renewed) >= m.fenceAfter() }

// step is one round: fence, heartbeat, compute ownership, release, renew,
// acquire.
func (m *Manager) step(ctx context.Context) error {
	// A consumer that stopped on its own (it only does on error) loses its
	// lease so that the partition is retried. A partition whose lock could
	// not be renewed for most of the TTL (the lease bucket unreachable, or
	// electing a leader) is given up before the lock can expire and another
	// replica take it: never two consumers on one partition.
	for p, l := range m.held {
		if m.fenced(l.renewed) {
			m.log.Warn("partition lock not renewed in time, giving the partition up", "partition", p,
				"renewed_ago", time.Since(l.renewed).Round(time.Millisecond))
			m.release(p, "lost")
			continue
		}
		select {
		case err := <-l.done:
			m.log.Error("partition consumer stopped", "partition", p, "err", err)
			l.done <- err
			m.release(p, "lost")
		default:
		}
	}
	octx, cancel := context.WithTimeout(ctx, m.opTimeout())
	_, err := m.kv.Put(octx, memberKey(m.id), []byte(time.Now().UTC().Format(time.RFC3339Nano)))
	cancel()
	if err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	members, err := m.members(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for p := range m.cfg.Count {
		mine := Owner(members, p) == m.id
		l, held := m.held[p]
		switch {
		case held && !mine:
			m.release(p, "released")
		case held:
			if err := m.renew(ctx, p, l); err != nil {
				errs = append(errs, err)
			}
		case mine:
			sent := time.Now()
			octx, cancel := context.WithTimeout(ctx, m.opTimeout())
			rev, err := m.kv.Create(octx, lockKey(p), []byte(m.id))
			cancel()
			if errors.Is(err, jetstream.ErrKeyExists) {
				continue // the previous owner has not let go yet (or an unanswered create of ours landed: it expires)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("acquiring partition %d: %w", p, err))
				continue
			}
			m.acquire(ctx, p, rev, sent)
		}
	}
	m.owned.Set(float64(len(m.held)))
	return errors.Join(errs...)
}

// renew writes p's lock again. A write left unanswered keeps the partition
// while the lease lasts (see fenced); a lock that moved on without us (it
// expired, or another replica holds it) loses it at once. A lock found with
// this replica's id at a newer revision is an unanswered renewal that
// landed: adopted.
func (m *Manager) renew(ctx context.Context, p int, l *lease) error {
	sent := time.Now()
	octx, cancel := context.WithTimeout(ctx, m.opTimeout())
	defer cancel()
	rev, err := m.kv.Update(octx, lockKey(p), []byte(m.id), l.rev)
	if err == nil {
		l.rev, l.renewed = rev, sent
		l.fence.Reset(m.fenceAfter() - time.Since(sent))
		return nil
	}
	var apiErr *jetstream.APIError
	if !errors.Is(err, jetstream.ErrKeyExists) &&
		!(errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence) {
		return fmt.Errorf("renewing lease of partition %d, will retry while it lasts: %w", p, err)
	}
	gctx, gcancel := context.WithTimeout(ctx, m.opTimeout())
	defer gcancel()
	if e, gerr := m.kv.Get(gctx, lockKey(p)); gerr == nil && string(e.Value()) == m.id && e.Revision() > l.rev {
		// Written by us after sent at the latest: renewed no earlier
		// than the previous try, which is what l.renewed keeps.
		l.rev = e.Revision()
		return nil
	}
	m.release(p, "lost")
	return fmt.Errorf("renewing lease of partition %d: %w", p, err)
}

func (m *Manager) members(ctx context.Context) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, m.opTimeout())
	defer cancel()
	lister, err := m.kv.ListKeysFiltered(ctx, "members.*")
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return []string{m.id}, nil
		}
		return nil, fmt.Errorf("listing members: %w", err)
	}
	defer func() { _ = lister.Stop() }()
	var out []string
	for k := range lister.Keys() {
		out = append(out, strings.TrimPrefix(k, "members."))
	}
	if !slices.Contains(out, m.id) {
		out = append(out, m.id)
	}
	return out, nil
}

func (m *Manager) acquire(ctx context.Context, p int, rev uint64, sent time.Time) {
	if m.hooks.Acquired != nil {
		m.hooks.Acquired(p)
	}
	cctx, cancel := context.WithCancel(ctx)
	l := &lease{rev: rev, renewed: sent, stop: cancel, done: make(chan error, 1)}
	l.fence = time.AfterFunc(m.fenceAfter()-time.Since(sent), cancel)
	m.held[p] = l
	go func() { l.done <- m.consume(cctx, p) }()
	m.moves.WithLabelValues("acquired").Inc()
	m.log.Info("partition acquired", "partition", p)
}

// release stops p's consumer, waits for it to finish what it was handed,
// then deletes the lock (only if it is still ours).
func (m *Manager) release(p int, change string) {
	l := m.held[p]
	delete(m.held, p)
	l.fence.Stop()
	l.stop()
	<-l.done
	if m.hooks.Released != nil {
		m.hooks.Released(p)
	}
	if change != "lost" {
		// Unanswered for long, the delete is moot: the lock expires.
		ctx, cancel := context.WithTimeout(context.Background(), m.opTimeout())
		defer cancel()
		if err := m.kv.Delete(ctx, lockKey(p), jetstream.LastRevision(l.rev)); err != nil {
			m.log.Warn("deleting partition lock; it expires with its TTL", "partition", p, "err", err)
		}
	}
	m.moves.WithLabelValues(change).Inc()
	m.log.Info("partition "+change, "partition", p)
}

func (m *Manager) leave() {
	for _, p := range m.Owned() {
		m.release(p, "released")
	}
	m.owned.Set(0)
	ctx, cancel := context.WithTimeout(context.Background(), m.opTimeout())
	defer cancel()
	_ = m.kv.Delete(ctx, memberKey(m.id))
}
