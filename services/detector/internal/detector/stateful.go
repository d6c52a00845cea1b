package detector

import (
	"context"
	"log/slog"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/services/detector/internal/anomaly"
	"github.com/whalewatch/whalewatch/services/detector/internal/partition"
	"github.com/whalewatch/whalewatch/services/detector/internal/state"
)

// stateJetStream is what the stateful detector needs beyond consuming:
// KV buckets (baselines, leases) and the partitioned stream.
type stateJetStream interface {
	bus.JetStream
	bus.KeyValueManager
	partition.StreamManager
	partition.SourceJetStream
}

// runStateful syncs baselines with KV and consumes telemetry, through the
// shared consumer or by partition. Consumption starts once the stored
// baselines are loaded.
func (d *Detector) runStateful(ctx context.Context, js stateJetStream) error {
	g, gctx := errgroup.WithContext(ctx)
	ready := make(chan struct{})
	if d.cfg.State.BaselineLearning > 0 {
		g.Go(func() error {
			kv, err := state.OpenBaselines(gctx, js, d.cfg.NATS.Streams.Replicas, func(err error) {
				d.log.Warn("opening baselines bucket, will retry", "err", err)
			})
			if err != nil {
				return nil // shutting down
			}
			return d.recorder.SyncBaselines(gctx, kv, ready, func(err error) {
				d.log.Warn("baseline sync", "err", err)
			})
		})
	} else {
		close(ready)
	}
	g.Go(func() error {
		select {
		case <-ready:
		case <-gctx.Done():
			return nil
		}
		if d.cfg.Partition.Count == 0 {
			return d.consume(gctx)
		}
		return d.runPartitioned(gctx, js)
	})
	return g.Wait()
}

// runPartitioned takes part in partition ownership (see package partition)
// and consumes the partitions this replica owns.
func (d *Detector) runPartitioned(ctx context.Context, js stateJetStream) error {
	n := d.cfg.Partition.Count
	// Each try gets a deadline sized for a busy meta leader, growing as
	// bus.EnsureStreams' do: a create whose answer was lost is found by the
	// next try's read.
	timeout := bus.APITimeout
	if !d.retry(ctx, "preparing partitions", func() error {
		actx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		timeout = min(2*timeout, bus.MaxAPITimeout)
		return partition.EnsureStream(actx, js, n, d.cfg.NATS.Streams)
	}) {
		return nil
	}
	kv, err := partition.OpenLeases(ctx, js, d.cfg.Partition.LeaseTTL, d.cfg.NATS.Streams.Replicas, func(err error) {
		d.log.Warn("opening the lease bucket, will retry", "err", err)
	})
	if err != nil {
		return nil // shutting down
	}
	// Windows of a partition are dropped when it arrives and when it
	// leaves: what this replica knew may be stale after someone else
	// consumed it meanwhile.
	forget := func(p int) {
		d.recorder.Forget(func(cid string) bool { return partition.Of(cid, n) == p }, "moved")
	}
	hooks := partition.Hooks{
		Acquired: func(p int) {
			forget(p)
			if d.partitionHooks.Acquired != nil {
				d.partitionHooks.Acquired(p)
			}
		},
		Released: func(p int) {
			forget(p)
			if d.partitionHooks.Released != nil {
				d.partitionHooks.Released(p)
			}
		},
	}
	m := partition.NewManager(d.cfg.Partition, d.cfg.Partition.ID(), kv, d.consumePartition, hooks, d.log, d.reg)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		partition.WatchSource(gctx, js, d.log, d.reg)
		return nil
	})
	g.Go(func() error { return m.Run(gctx) })
	return g.Wait()
}

// consumePartition consumes partition p until ctx ends. Its ack wait is
// pkg/bus's short default: what this replica holds gets in-progress acks, so
// only what a dead replica held (redelivered to the partition's next owner,
// once it moved) or what a dying consumer leader sent waits it out.
func (d *Detector) consumePartition(ctx context.Context, p int) error {
	c := bus.NewConsumer(d.js, bus.ConsumerConfig{
		Stream:         partition.Stream,
		Durable:        partition.Durable(d.cfg.Durable, p),
		FilterSubjects: []string{partition.Subject(p)},
		BatchSize:      1,
		MaxDeliver:     10,
	}, bus.Each(d.Handle), d.metrics, d.log.With("partition", p))
	return c.Run(ctx)
}

// respond asks for the response the policy gives for threat t. Responses
// are best effort: a failure is logged and does not retry the telemetry.
func (d *Detector) respond(ctx context.Context, t *event.Event) {
	req, err := d.responder.Respond(ctx, t)
	if err != nil {
		d.log.Warn("response request failed", "rule", t.Rule.ID, "err", err)
		return
	}
	if req != nil {
		r := req.Whalewatch.Response
		d.log.Info("response requested", "action", r.Action, "dry_run", r.DryRun,
			"host", req.Host.Name, "container", req.Container.ID, "threat", t.Event.ID)
	}
}

// retry calls f until it succeeds (true) or ctx ends (false).
func (d *Detector) retry(ctx context.Context, what string, f func() error) bool {
	delay := 100 * time.Millisecond
	for {
		err := f()
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		d.log.Warn(what+", will retry", "err", err)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(delay):
		}
		delay = min(delay*2, 5*time.Second)
	}
}

// anomalyScorer returns the option that scores resource samples with the
// anomaly model (one Isolation Forest per image, default configuration).
func anomalyScorer(log *slog.Logger) state.Option {
	m, err := anomaly.New(anomaly.DefaultConfig())
	if err != nil {
		log.Error("anomaly model disabled", "err", err)
		return func(*state.Recorder) {}
	}
	return state.WithScorer(modelScorer{m})
}

// modelScorer adapts anomaly.Model to state.Scorer (vector order:
// state.FeatureNames, the order of anomaly.Features).
type modelScorer struct{ m *anomaly.Model }

func (s modelScorer) Observe(image string, f []float64) (float64, []string) {
	if len(f) != len(state.FeatureNames) {
		return 0, nil
	}
	r := s.m.Observe(image, anomaly.Features{
		CPUPercent: f[0], MemoryBytes: f[1], NetRxBytesPerSec: f[2], NetTxBytesPerSec: f[3],
		ProcessCount: f[4], ConnectionCount: f[5], NewProcessRate: f[6],
	})
	return r.Score, r.Top
}
