package bustest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/claim"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/subject"
	"github.com/whalewatch/whalewatch/testkit/natscluster"
)

// clusterStreams is the streams' configuration on a three-node cluster.
func clusterStreams(tb testing.TB) bus.StreamsConfig {
	tb.Helper()
	c := streamsConfig(tb)
	c.Replicas = 3
	return c
}

// connectService connects as a service does (pkg/bus Connect, jetstream.New
// with its default timeouts).
func connectService(tb testing.TB, c *natscluster.Cluster, name string) jetstream.JetStream {
	tb.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	nc, err := bus.Connect(bus.Config{URL: c.URLs()}, name, log)
	require.NoError(tb, err)
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(tb, err)
	return js
}

// startUp is what a service does before it is ready: the streams, its
// durable consumer and its KV bucket, each retried until NATS answers.
func startUp(ctx context.Context, js jetstream.JetStream, streams bus.StreamsConfig, name string, warn func(error)) error {
	if err := bus.EnsureStreamsRetry(ctx, js, streams, warn); err != nil {
		return err
	}
	cfg := jetstream.ConsumerConfig{
		Durable: name, AckPolicy: jetstream.AckExplicitPolicy,
		FilterSubject: "whalewatch.threats.>", DeliverPolicy: jetstream.DeliverAllPolicy,
	}
	if _, err := bus.EnsureConsumer(ctx, js, bus.StreamThreats, cfg, warn); err != nil {
		return err
	}
	for {
		_, err := claim.Open(ctx, js, claim.Config{Bucket: "startup_" + name, TTL: time.Hour, Replicas: 3, Lease: time.Second})
		if err == nil || ctx.Err() != nil {
			return err
		}
		warn(err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Six services starting at once on a fresh cluster are all ready within
// seconds: no create waits out a timeout behind a busy meta leader.
func TestClusterStartUpManyAtOnce(t *testing.T) {
	t.Parallel()
	c := natscluster.New(t)
	streams := clusterStreams(t)
	const n = 6
	js := make([]jetstream.JetStream, n)
	for i := range n {
		js[i] = connectService(t, c, fmt.Sprintf("svc-%d", i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var mu sync.Mutex
	var warnings []string
	took := make([]time.Duration, n)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			err := startUp(ctx, js[i], streams, fmt.Sprintf("svc-%d", i), func(err error) {
				mu.Lock()
				warnings = append(warnings, err.Error())
				mu.Unlock()
			})
			require.NoError(t, err)
			took[i] = time.Since(start)
		})
	}
	wg.Wait()
	slowest := time.Duration(0)
	for _, d := range took {
		slowest = max(slowest, d)
	}
	t.Logf("%d services ready on a fresh cluster within %v (each: %v); %d retries: %v", n, slowest.Round(time.Millisecond), took, len(warnings), warnings)
	// The figure (docs/RELIABILITY.md) is 3 s; the bound here leaves room
	// for a loaded test machine, and still fails on a 5 s timeout.
	require.Less(t, slowest, slowdown*5*time.Second, "start-up on a cluster")
	for _, s := range streams.Specs() {
		info, err := js[0].Stream(ctx, s.Name)
		require.NoError(t, err)
		require.Equal(t, 3, info.CachedInfo().Config.Replicas)
	}
}

// failoverRun is what one run through a leader kill measured.
type failoverRun struct {
	handled     int           // handler calls, redeliveries included
	redelivered int           // handler calls for an event seen before
	stored      uint64        // outputs stored (one per event id)
	worst       time.Duration // longest time from publish to first handling
	elected     time.Duration // from the kill until the stream, the consumer and the output stream were led again
}

// A pkg/bus consumer (as the detector, indexer and collector use it) rides
// through the kill of its consumer's leader under load: every event is
// handled and output once, and none waits long for it.
func TestClusterConsumerThroughLeaderKill(t *testing.T) {
	t.Parallel()
	r := runConsumerFailover(t, 1200, 150)
	t.Logf("1200 events at 150/s, consumer leader killed and restarted: %d outputs, %d handled (%d redelivered), leaders elected %v after the kill, longest wait %v",
		r.stored, r.handled, r.redelivered, r.elected.Round(time.Millisecond), r.worst.Round(time.Millisecond))
	require.EqualValues(t, 1200, r.stored, "outputs: none lost, none twice")
	// An event waits for the elections, then at most: a pull's two missed
	// heartbeats (2 s) or a failed pull's back-off (up to 2 s), and a
	// message the dying leader had sent, redelivered after the ack wait
	// (5 s from its delivery, before the kill) once the new leader looks
	// (0.5-1.5 s after its election). The race detector slows each.
	require.Less(t, r.worst, max(r.elected, 5*time.Second)+slowdown*4*time.Second, "longest wait after the leader change")
}

func runConsumerFailover(t *testing.T, n, rate int) failoverRun {
	c := natscluster.New(t)
	_, admin := c.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), slowdown*90*time.Second)
	defer cancel()
	require.NoError(t, bus.EnsureStreamsRetry(ctx, admin, clusterStreams(t), nil))
	_, err := admin.CreateStream(ctx, jetstream.StreamConfig{Name: "OUT", Subjects: []string{"out.>"}, Replicas: 3, Duplicates: 10 * time.Minute})
	require.NoError(t, err)

	var mu sync.Mutex
	published := map[string]time.Time{}
	seen := map[string]int{}
	var run failoverRun
	out := connectService(t, c, "output")
	handler := bus.HandlerFunc(func(ctx context.Context, batch []*event.Event) []error {
		errs := make([]error, len(batch))
		for i, e := range batch {
			mu.Lock()
			run.handled++
			if seen[e.Event.ID]++; seen[e.Event.ID] > 1 {
				run.redelivered++
			} else if p, ok := published[e.Event.ID]; ok {
				run.worst = max(run.worst, time.Since(p))
			}
			mu.Unlock()
			// The output, as a detector's threat: published with the
			// event's id, so a redelivery is stored once.
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, errs[i] = out.Publish(pctx, "out."+e.Event.ID, nil, jetstream.WithMsgID(e.Event.ID))
			cancel()
		}
		return errs
	})
	runConsumer(t, connectService(t, c, "consumer"), bus.ConsumerConfig{
		Stream: bus.StreamTelemetry, Durable: "failover", BatchSize: 1, MaxDeliver: -1,
	}, handler)
	leader := c.WaitConsumerLeader(bus.StreamTelemetry, "failover", 20*time.Second)

	pub := connectService(t, c, "publisher")
	var outage func(time.Duration) time.Duration
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for i := range n {
		<-tick.C
		switch i {
		case n / 3:
			killed := time.Now()
			c.Kill(leader)
			outage = c.Outage(killed,
				func() int { return c.StreamLeader(bus.StreamTelemetry) },
				func() int { return c.ConsumerLeader(bus.StreamTelemetry, "failover") },
				func() int { return c.StreamLeader("OUT") })
		case 2 * n / 3:
			c.Restart(leader)
		}
		e := telemetry(fmt.Sprintf("ev%05d", i))
		data, err := event.Marshal(e)
		require.NoError(t, err)
		mu.Lock()
		published[e.Event.ID] = time.Now()
		mu.Unlock()
		msg := nats.NewMsg(subject.ForTelemetry(e))
		msg.Data = data
		natscluster.PublishUntilStored(t, ctx, pub, msg, e.Event.ID) // as a collector does
	}
	stream, err := admin.Stream(ctx, "OUT")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		info, err := stream.Info(ctx)
		if err == nil {
			run.stored = info.State.Msgs
		}
		return run.stored >= uint64(n)
	}, 60*time.Second, 100*time.Millisecond, "every event output")
	info, err := stream.Info(ctx)
	require.NoError(t, err)
	run.stored = info.State.Msgs
	run.elected = outage(time.Minute)
	mu.Lock()
	defer mu.Unlock()
	return run
}
