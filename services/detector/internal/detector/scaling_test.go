package detector

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
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/subject"
	"github.com/whalewatch/whalewatch/services/detector/internal/partition"
	"github.com/whalewatch/whalewatch/testkit/natstest"
)

func connectEvent(cid string, port int) *event.Event {
	e := &event.Event{
		Timestamp:   time.Now().UTC(),
		Event:       event.Meta{ID: event.NewID(), Kind: event.KindEvent, Category: []string{"network"}},
		Host:        event.Host{Name: "h1"},
		Container:   &event.Container{ID: cid, Name: "web", Image: event.Image{Name: "busybox", Tag: []string{"1"}}},
		Source:      &event.Endpoint{IP: "172.17.0.2", Port: 40000 + port},
		Destination: &event.Endpoint{IP: "10.1.2.3", Port: port},
		Network:     &event.Network{Transport: "tcp", Direction: "egress"},
		Whalewatch: event.Whalewatch{
			SchemaVersion: event.SchemaVersion, Telemetry: event.TelemetryNetwork, Socket: &event.Socket{State: "syn_sent"},
		},
	}
	return e
}

// TestThreeDetectorReplicasKillOne runs three detectors against one NATS
// server with partitioning on, kills one without a goodbye, and checks that
// threats for every malicious container arrive, before and after, and that
// the per-container windows of partitions that did not move are intact.
func TestThreeDetectorReplicasKillOne(t *testing.T) {
	t.Parallel()
	s := natstest.Server(t)
	_, js := natstest.Connect(t, s)
	ctx := t.Context()
	base := testConfig(t)
	base.Partition.Count = 8
	base.Partition.LeaseTTL = 5 * time.Second // renewals every 1.25 s survive a loaded CI machine
	require.NoError(t, bus.EnsureStreams(ctx, js, base.NATS.Streams))

	var mu sync.Mutex
	holder := map[int]string{}
	var violations []string
	type replica struct {
		nc     *nats.Conn
		d      *Detector
		cancel context.CancelFunc
		done   chan error
		dead   bool
	}
	replicas := map[string]*replica{}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for i := range 3 {
		id := fmt.Sprintf("r%d", i)
		nc, err := nats.Connect(s.ClientURL())
		require.NoError(t, err)
		rjs, err := jetstream.New(nc)
		require.NoError(t, err)
		cfg := base
		cfg.Partition.ReplicaID = id
		d := New(rjs, cfg, log, prometheus.NewRegistry())
		d.partitionHooks = partition.Hooks{
			Acquired: func(p int) {
				mu.Lock()
				defer mu.Unlock()
				if h := holder[p]; h != "" && !replicas[h].dead {
					violations = append(violations, fmt.Sprintf("%s acquired partition %d held by %s", id, p, h))
				}
				holder[p] = id
			},
			Released: func(p int) {
				mu.Lock()
				defer mu.Unlock()
				if holder[p] == id {
					delete(holder, p)
				}
			},
		}
		rctx, cancel := context.WithCancel(ctx)
		r := &replica{nc: nc, d: d, cancel: cancel, done: make(chan error, 1)}
		mu.Lock()
		replicas[id] = r
		mu.Unlock()
		go func() { r.done <- d.Run(rctx) }()
		t.Cleanup(func() {
			cancel()
			<-r.done
			nc.Close()
		})
	}
	owner := func(cid string) string {
		mu.Lock()
		defer mu.Unlock()
		return holder[partition.Of(cid, base.Partition.Count)]
	}
	// Settled: every partition with its owner among the three (a replica
	// that joined late under load may not have taken its share yet).
	natstest.Eventually(t, 30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for p := range base.Partition.Count {
			if holder[p] != partition.Owner([]string{"r0", "r1", "r2"}, p) {
				return false
			}
		}
		return true
	}, "partitions not settled over three replicas")

	threats := map[string]int{} // container → threats
	sub, err := js.OrderedConsumer(ctx, bus.StreamThreats, jetstream.OrderedConsumerConfig{})
	require.NoError(t, err)
	cc, err := sub.Consume(func(m jetstream.Msg) {
		if e, err := event.Decode(m.Data()); err == nil && e.Container != nil {
			mu.Lock()
			threats[e.Container.ID]++
			mu.Unlock()
		}
	})
	require.NoError(t, err)
	t.Cleanup(cc.Stop)

	pub := bus.NewEventPublisher(js, prometheus.NewRegistry())
	cid := func(phase, i int) string { return fmt.Sprintf("%02d%062x", phase, i*104729+7) }
	const containers, malicious, conns = 24, 8, 5
	publish := func(phase int) {
		for i := range containers {
			c := cid(0, i)
			for n := range conns {
				e := connectEvent(c, 1000*phase+n)
				require.NoError(t, pub.Publish(ctx, subject.ForTelemetry(e), e))
			}
			if i < malicious {
				e := processEvent("h1", cid(phase, i), "nc", "-l", "-p", fmt.Sprint(4444+phase))
				require.NoError(t, pub.Publish(ctx, subject.ForTelemetry(e), e))
			}
		}
	}
	allThreats := func(phase int) func() bool {
		return func() bool {
			mu.Lock()
			defer mu.Unlock()
			for i := range malicious {
				if threats[cid(phase, i)] == 0 {
					return false
				}
			}
			return true
		}
	}
	publish(0)
	natstest.Eventually(t, 30*time.Second, allThreats(0), "threats before the kill")
	// Windows are complete before the kill.
	natstest.Eventually(t, 30*time.Second, func() bool {
		for i := range containers {
			r := replicas[owner(cid(0, i))]
			if w, ok := r.d.recorder.Window(cid(0, i)); !ok || w.ConnAttempts != conns {
				return false
			}
		}
		return true
	}, "windows before the kill")
	stayed := map[string]string{}
	for i := range containers {
		if o := owner(cid(0, i)); o != "r0" {
			stayed[cid(0, i)] = o
		}
	}

	killed := replicas["r0"]
	mu.Lock()
	killed.dead = true
	mu.Unlock()
	killed.nc.Close()
	publish(1)
	natstest.Eventually(t, 40*time.Second, allThreats(1), "threats after the kill")
	natstest.Eventually(t, 30*time.Second, func() bool {
		for i := range containers {
			o := owner(cid(0, i))
			if o == "" || o == "r0" {
				return false
			}
			w, ok := replicas[o].d.recorder.Window(cid(0, i))
			if !ok || w.ConnAttempts < conns {
				return false
			}
		}
		return true
	}, "r0's containers not taken over")

	// Containers whose partition did not move kept one window with both
	// phases; moved ones start over at their new owner (the documented loss).
	for c, o := range stayed {
		require.Equal(t, o, owner(c), "container %s moved between live replicas", c)
		w, ok := replicas[o].d.recorder.Window(c)
		require.True(t, ok)
		require.Equal(t, 2*conns, w.ConnAttempts, "container %s", c)
	}
	mu.Lock()
	defer mu.Unlock()
	require.Empty(t, violations)
}
