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
	rev  uint64
	stop context.CancelFunc
	done chan error
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

// step is one round: heartbeat, compute ownership, release, renew, acquire.
func (m *Manager) step(ctx context.Context) error {
	// A consumer that stopped on its own (it only does on error) loses its
	// lease so that the partition is retried.
	for p, l := range m.held {
		select {
		case err := <-l.done:
			m.log.Error("partition consumer stopped", "partition", p, "err", err)
			l.done <- err
			m.release(p, "lost")
		default:
		}
	}
	if _, err := m.kv.Put(ctx, memberKey(m.id), []byte(time.Now().UTC().Format(time.RFC3339Nano))); err != nil {
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
			rev, err := m.kv.Update(ctx, lockKey(p), []byte(m.id), l.rev)
			if err != nil {
				// Someone else holds it, or NATS is unreachable: either way
				// this replica may no longer assume it is alone on p.
				errs = append(errs, fmt.Errorf("renewing lease of partition %d: %w", p, err))
				m.release(p, "lost")
				continue
			}
			l.rev = rev
		case mine:
			rev, err := m.kv.Create(ctx, lockKey(p), []byte(m.id))
			if errors.Is(err, jetstream.ErrKeyExists) {
				continue // the previous owner has not let go yet
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("acquiring partition %d: %w", p, err))
				continue
			}
			m.acquire(ctx, p, rev)
		}
	}
	m.owned.Set(float64(len(m.held)))
	return errors.Join(errs...)
}

func (m *Manager) members(ctx context.Context) ([]string, error) {
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

func (m *Manager) acquire(ctx context.Context, p int, rev uint64) {
	if m.hooks.Acquired != nil {
		m.hooks.Acquired(p)
	}
	cctx, cancel := context.WithCancel(ctx)
	l := &lease{rev: rev, stop: cancel, done: make(chan error, 1)}
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
	l.stop()
	<-l.done
	if m.hooks.Released != nil {
		m.hooks.Released(p)
	}
	if change != "lost" {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
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
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = m.kv.Delete(ctx, memberKey(m.id))
}
