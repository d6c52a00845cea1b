package indexer

import (
	"context"
	"flag"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/subject"
	"github.com/whalewatch/whalewatch/testkit/esstub"
	"github.com/whalewatch/whalewatch/testkit/natscluster"
	"github.com/whalewatch/whalewatch/testkit/natstest"
)

// On a three-node cluster with R3 streams, events published at a steady
// rate while the node leading WHALEWATCH_TELEMETRY, then the node leading the
// indexer's consumer, is killed and restarted are all indexed, each once, and
// none waits long: the longest time from an event's PubAck to its document
// is logged (the stall a leader change costs) and bounded.
func TestClusterLeaderKillsLoseAndDuplicateNothing(t *testing.T) {
	t.Parallel()
	const (
		n    = 1500
		rate = 150 // events/s: the kills happen under load
	)
	c := natscluster.New(t)
	es := esstub.New(t)
	_, js := c.Connect(t)
	var streams bus.StreamsConfig
	streams.RegisterFlags(flag.NewFlagSet("streams", flag.ContinueOnError))
	streams.Replicas = 3
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, bus.EnsureStreamsRetry(ctx, js, streams, func(error) {}))

	cfg, err := parseConfig(t, []string{
		"-nats-url", c.URLs(), "-stream-replicas", "3",
		"-elasticsearch-url", es.URL, "-http-addr", "",
		"-flush-interval", "20ms", "-retry-max-backoff", "1s",
		"-elasticsearch-timeout", "2s", "-shutdown-timeout", "5s",
	}, nil)
	require.NoError(t, err)
	// The default ack wait bounds how long a message a dying consumer
	// leader sent (and the client never got) waits for redelivery.
	ackWait := cfg.AckWait
	reg := prometheus.NewRegistry()
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(runCtx, cfg, testLogger(t), reg, nil) }()
	t.Cleanup(func() {
		stop()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(wait):
			t.Error("the indexer did not stop")
		}
	})
	natstest.Eventually(t, wait, func() bool { return c.ConsumerLeader(bus.StreamTelemetry, ConsumerTelemetry) >= 0 },
		"the indexer's telemetry consumer exists")

	// The documents' arrival times, read as they come.
	var mu sync.Mutex
	var published atomic.Int64
	arrived := map[string]time.Time{}
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		seen := 0
		for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); {
			if es.DocCount() > seen {
				docs := es.AllDocs()
				now := time.Now()
				mu.Lock()
				for _, d := range docs[seen:] {
					if _, dup := arrived[d.ID]; !dup {
						arrived[d.ID] = now
					}
				}
				mu.Unlock()
				seen = len(docs)
			}
			if seen >= n {
				return
			}
			time.Sleep(5 * time.Millisecond) // polling interval of the measurement
		}
	}()

	// The publishers, as the collector's: complete events, each retried with
	// its id (Nats-Msg-Id) until JetStream stores it, through elections.
	// Several publish at once at a steady rate, as many collectors do, so
	// that a slow round trip (-race) does not slow the rate.
	pub := bus.NewEventPublisher(js, prometheus.NewRegistry(), bus.CompleteAs(event.Agent{Type: "whalewatch-collector", Name: "docker-host-1", Version: "test"}))
	stored := make(map[string]time.Time, n)
	pubCtx, pubCancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer pubCancel()
	jobs := make(chan int)
	var publishers sync.WaitGroup
	for range 16 {
		publishers.Go(func() {
			for i := range jobs {
				e := telemetry(event.Telemetries[i%len(event.Telemetries)])
				e.Event.ID = fmt.Sprintf("cluster-%05d", i)
				var err error
				for pubCtx.Err() == nil {
					actx, acancel := context.WithTimeout(pubCtx, 2*time.Second)
					err = pub.Publish(actx, subject.ForTelemetry(e), e)
					acancel()
					if err == nil {
						break
					}
				}
				if err != nil {
					t.Errorf("publishing %s: %v", e.Event.ID, err)
					continue
				}
				mu.Lock()
				stored[e.Event.ID] = time.Now()
				mu.Unlock()
				published.Add(1)
			}
		})
	}
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		tick := time.NewTicker(time.Second / rate)
		defer tick.Stop()
		for i := range n {
			<-tick.C
			jobs <- i
		}
		close(jobs)
		publishers.Wait()
	}()
	until := func(k int) {
		natstest.Eventually(t, time.Minute, func() bool { return published.Load() >= int64(k) }, "%d events published", k)
	}

	// Kill and restart the stream leader, then the consumer leader.
	kills := []struct {
		what   string
		leader func() int
	}{
		{"leader of " + bus.StreamTelemetry, func() int { return c.WaitStreamLeader(bus.StreamTelemetry, 20*time.Second) }},
		{"leader of consumer " + ConsumerTelemetry, func() int {
			return c.WaitConsumerLeader(bus.StreamTelemetry, ConsumerTelemetry, 20*time.Second)
		}},
	}
	// The outage a kill causes lasts until the stream AND the consumer have
	// a leader again: the killed node may have led both, and then the
	// consumer's election follows the stream's.
	var longestOutage time.Duration
	for k, kill := range kills {
		until(n * (2*k + 1) / 5)
		node := kill.leader()
		killed := time.Now()
		c.Kill(node)
		kill.leader() // elected among the two left
		election := time.Since(killed)
		for _, other := range kills {
			other.leader()
		}
		outage := time.Since(killed)
		longestOutage = max(longestOutage, outage)
		t.Logf("%s: node %d killed, new leader elected in %v, stream and consumer both led after %v",
			kill.what, node, election.Round(time.Millisecond), outage.Round(time.Millisecond))
		until(n * (2*k + 2) / 5)
		c.Restart(node)
		c.WaitReady(20 * time.Second)
	}
	<-pubDone
	<-watchDone

	docs := es.AllDocs()
	ids := map[string]int{}
	for _, d := range docs {
		ids[d.ID]++
	}
	mu.Lock()
	defer mu.Unlock()
	var lost []string
	for id := range stored {
		if ids[id] == 0 {
			lost = append(lost, id)
		}
	}
	require.Empty(t, lost, "events never indexed")
	require.Len(t, docs, n, "documents stored (a duplicate _id is never stored twice)")
	for id, k := range ids {
		require.Equal(t, 1, k, "%s stored %d times", id, k)
	}
	var longest time.Duration
	var worst string
	for id, at := range arrived {
		if d := at.Sub(stored[id]); d > longest {
			longest, worst = d, id
		}
	}
	t.Logf("%d events, %d documents, 0 lost, 0 duplicate; longest PubAck-to-document delay %v (%s), ack-wait %v",
		n, len(docs), longest.Round(time.Millisecond), worst, ackWait)
	// An event waits for the outage, then at most: a failed pull's back-off
	// (up to 2 s), a bulk retry's back-off (1 s), and for a message the
	// dying consumer leader had sent, its redelivery after the ack wait (5 s
	// from its delivery, before the kill) once the new leader looks (0.5-1.5
	// s after its election). The race detector slows each; CI under -race
	// at load 3-10 saw 18.2 s with an outage of 6 s and a 6 s ack wait.
	require.Less(t, longest, max(longestOutage, ackWait)+slowdown*5*time.Second, "longest stall")
	require.Zero(t, prepared(t, reg, "slow"), "complete events take the fast path")
	require.GreaterOrEqual(t, prepared(t, reg, "fast"), float64(n))
}

// prepared is whalewatch_indexer_prepared_total{path}.
func prepared(tb testing.TB, reg *prometheus.Registry, path string) float64 {
	tb.Helper()
	mfs, err := reg.Gather()
	require.NoError(tb, err)
	for _, mf := range mfs {
		if mf.GetName() != "whalewatch_indexer_prepared_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "path" && l.GetValue() == path {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
