package detector

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
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

// benchEvent is the i-th event of a benchmark load: one in a hundred is a
// netcat exec (a threat), the rest a mix of process, network and resource
// telemetry over 200 containers.
func benchEvent(i int) *event.Event {
	cid := fmt.Sprintf("%064x", i%200+1)
	if i%100 == 99 {
		return processEvent("h1", cid, "nc", "-l", "-p", fmt.Sprint(10000+i))
	}
	switch i % 3 {
	case 0:
		return processEvent("h1", cid, "sleep", fmt.Sprint(i))
	case 1:
		return connectEvent(cid, 1+i%50000)
	}
	e := processEvent("h1", cid, "x")
	e.Process = nil
	e.Whalewatch.Telemetry = event.TelemetryResource
	e.Whalewatch.Resource = &event.Resource{IntervalSeconds: 1, CPUPercent: 12, MemoryBytes: 1 << 20, NetRxBytes: uint64(i) * 100, PIDs: 2}
	return e
}

// benchStack starts a server, the streams and a detector in the given mode
// (0: shared consumer; n: n partitions, one replica).
func benchStack(b *testing.B, partitions int) (jetstream.JetStream, *nats.Conn, *prometheus.Registry, func()) {
	b.Helper()
	s := natstest.Server(b)
	nc, js := natstest.Connect(b, s)
	cfg := testConfig(b)
	cfg.Partition.Count = partitions
	cfg.State.IncidentWindow = 0
	ctx := b.Context()
	require.NoError(b, bus.EnsureStreams(ctx, js, cfg.NATS.Streams))
	if partitions > 0 {
		require.NoError(b, partition.EnsureStream(ctx, js, partitions, cfg.NATS.Streams))
	}
	reg := prometheus.NewRegistry()
	dnc, djs := natstest.Connect(b, s)
	_ = dnc
	d := New(djs, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), reg)
	start := func() {
		dctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- d.Run(dctx) }()
		b.Cleanup(func() { cancel(); <-done })
	}
	return js, nc, reg, start
}

func acked(reg *prometheus.Registry) float64 {
	mfs, _ := reg.Gather()
	var n float64
	for _, mf := range mfs {
		if mf.GetName() != "whalewatch_bus_consumed_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			n += m.GetCounter().GetValue()
		}
	}
	return n
}

func publishAsync(b *testing.B, js jetstream.JetStream, e *event.Event) {
	data, err := event.Marshal(e)
	require.NoError(b, err)
	msg := nats.NewMsg(subject.ForTelemetry(e))
	msg.Data = data
	_, err = js.PublishMsgAsync(msg, jetstream.WithMsgID(e.Event.ID))
	require.NoError(b, err)
}

// BenchmarkThroughput measures NATS in to NATS out: b.N telemetry events
// stored first, then the time the detector takes to evaluate and ack them
// all and publish their threats. "floor" is a no-op handler on the same
// consumer: what JetStream alone costs.
func BenchmarkThroughput(b *testing.B) {
	for _, mode := range []struct {
		name       string
		partitions int
		noop       bool
	}{{"floor", 0, true}, {"shared-consumer", 0, false}, {"partitions-4", 4, false}} {
		b.Run(mode.name, func(b *testing.B) {
			js, _, reg, start := benchStack(b, mode.partitions)
			for i := range b.N {
				publishAsync(b, js, benchEvent(i))
			}
			<-js.PublishAsyncComplete()
			b.ResetTimer()
			if mode.noop {
				reg = prometheus.NewRegistry() // the detector's consumer metrics are not used
				m := bus.NewConsumerMetrics(reg)
				c := bus.NewConsumer(js, bus.ConsumerConfig{Stream: bus.StreamTelemetry, Durable: "floor", BatchSize: 1},
					bus.Each(func(context.Context, *event.Event) error { return nil }), m, slog.New(slog.NewTextHandler(io.Discard, nil)))
				ctx, cancel := context.WithCancel(b.Context())
				done := make(chan error, 1)
				go func() { done <- c.Run(ctx) }()
				defer func() { cancel(); <-done }()
			} else {
				start()
			}
			for acked(reg) < float64(b.N) {
				time.Sleep(time.Millisecond)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkLatency publishes b.N events at 2,000 and 10,000 per second (1 %
// threats) and reports the time from publishing a malicious event to
// receiving its threat, p50 and p99. Run with -benchtime=30000x or more.
func BenchmarkLatency(b *testing.B) {
	for _, mode := range []struct {
		name       string
		partitions int
		rate       int
	}{{"shared-consumer/2k", 0, 2000}, {"shared-consumer/10k", 0, 10000}, {"partitions-4/2k", 4, 2000}, {"partitions-4/10k", 4, 10000}} {
		b.Run(mode.name, func(b *testing.B) {
			rate := mode.rate
			js, nc, _, start := benchStack(b, mode.partitions)
			start()
			var mu sync.Mutex
			sent := map[string]time.Time{}
			var lat []time.Duration
			sub, err := nc.Subscribe(subject.AllThreats, func(m *nats.Msg) {
				now := time.Now()
				e, err := event.Decode(m.Data)
				if err != nil {
					return
				}
				mu.Lock()
				if at, ok := sent[e.Whalewatch.Trigger]; ok {
					lat = append(lat, now.Sub(at))
					delete(sent, e.Whalewatch.Trigger)
				}
				mu.Unlock()
			})
			require.NoError(b, err)
			defer func() { _ = sub.Unsubscribe() }()
			require.NoError(b, nc.Flush())

			want := 0
			b.ResetTimer()
			t0 := time.Now()
			for i := 0; i < b.N; {
				// Catch up with the schedule, then wait for the next event's
				// slot: the average rate holds even when the machine stalls.
				due := min(b.N, int(time.Since(t0).Seconds()*float64(rate))+1)
				if i >= due {
					time.Sleep(time.Until(t0.Add(time.Duration(i) * time.Second / time.Duration(rate))))
					continue
				}
				for i < due {
					e := benchEvent(i)
					if e.Process != nil && e.Process.Name == "nc" {
						mu.Lock()
						sent[e.Event.ID] = time.Now()
						mu.Unlock()
						want++
					}
					publishAsync(b, js, e)
					i++
				}
			}
			<-js.PublishAsyncComplete()
			achieved := float64(b.N) / time.Since(t0).Seconds()
			deadline := time.Now().Add(30 * time.Second)
			for {
				mu.Lock()
				n := len(lat)
				mu.Unlock()
				if n >= want || time.Now().After(deadline) {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			b.StopTimer()
			mu.Lock()
			defer mu.Unlock()
			require.Len(b, lat, want, "threats missing")
			if want == 0 {
				return // b.N below 100: nothing to measure
			}
			slices.Sort(lat)
			q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
			b.ReportMetric(achieved, "events/s")
			b.ReportMetric(q(0.50), "p50-ms")
			b.ReportMetric(q(0.99), "p99-ms")
			b.ReportMetric(q(1), "max-ms")
		})
	}
}
