package bustest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/subject"
	"github.com/whalewatch/whalewatch/testkit/natstest"
)

// rawRecorder is a batch handler whose outcome per event id the test
// decides; what does not decode is event.ErrInvalid, as for the indexer.
type rawRecorder struct {
	mu      sync.Mutex
	seen    map[string]int
	batches []int
	outcome func(id string, attempt int) error
}

func (r *rawRecorder) HandleBatch(_ context.Context, payloads [][]byte) []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seen == nil {
		r.seen = map[string]int{}
	}
	r.batches = append(r.batches, len(payloads))
	errs := make([]error, len(payloads))
	for i, p := range payloads {
		e, err := event.Decode(p)
		if err != nil {
			errs[i] = err
			continue
		}
		r.seen[e.Event.ID]++
		if r.outcome != nil {
			errs[i] = r.outcome(e.Event.ID, r.seen[e.Event.ID])
		}
	}
	return errs
}

func (r *rawRecorder) count(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen[id]
}

func runBatchConsumer(tb testing.TB, js jetstream.JetStream, cfg bus.BatchConfig, h bus.BatchHandler) (stop func() error) {
	tb.Helper()
	c := bus.NewBatchConsumer(js, cfg, h, bus.NewConsumerMetrics(prometheus.NewRegistry()), testLog())
	return runUntilStopped(tb, c.Run)
}

func settled(tb testing.TB, js jetstream.JetStream, stream, durable string) {
	tb.Helper()
	ctx := context.Background()
	natstest.Eventually(tb, 10*time.Second, func() bool {
		c, err := js.Consumer(ctx, stream, durable)
		if err != nil {
			return false
		}
		info, err := c.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	}, "%s: messages left unsettled", durable)
}

// The batch consumer keeps Consumer's contract: acked once handled, retried
// after a transient failure, dead-lettered with the reason (invalid,
// permanent, max_deliver) and never blocking the others, for every source.
func TestBatchConsumerAcksDeadLettersAndRetries(t *testing.T) {
	t.Parallel()
	nc, js := setup(t)
	good, flaky, poison, hopeless, threat := event.NewID(), event.NewID(), event.NewID(), event.NewID(), event.NewID()
	h := &rawRecorder{outcome: func(id string, attempt int) error {
		switch id {
		case flaky:
			if attempt == 1 {
				return errors.New("sink briefly down")
			}
		case poison:
			return bus.Permanent(errors.New("mapper_parsing_exception"))
		case hopeless:
			return errors.New("always failing")
		}
		return nil
	}}
	runBatchConsumer(t, js, bus.BatchConfig{
		Sources: []bus.BatchSource{
			{Stream: bus.StreamTelemetry, Durable: "b1", FilterSubjects: []string{subject.AllTelemetry}},
			{Stream: bus.StreamThreats, Durable: "b1-threats", FilterSubjects: []string{subject.AllThreats}},
		},
		BatchSize: 10, MaxBytes: 1 << 20, Workers: 2, FlushInterval: 20 * time.Millisecond,
		MaxDeliver: 2, MaxBackoff: 50 * time.Millisecond,
	}, h)

	for _, id := range []string{poison, good, flaky, hopeless} {
		publish(t, js, telemetry(id))
	}
	require.NoError(t, nc.Publish("whalewatch.telemetry.h1.c1.process", []byte("{not json")))
	th := telemetry(threat)
	th.Event.Kind, th.Rule, th.Whalewatch.Severity = event.KindAlert, &event.Rule{ID: "r1"}, event.SeverityHigh
	data, err := event.Marshal(th)
	require.NoError(t, err)
	_, err = js.Publish(context.Background(), subject.ForThreat(th), data)
	require.NoError(t, err)

	dl := deadLetters(t, js, "b1", 3)
	reasons := map[string]int{}
	for _, d := range dl {
		reasons[d.Headers().Get(bus.HeaderReason)]++
		require.Equal(t, "whalewatch.telemetry.h1.c1.process", d.Headers().Get(bus.HeaderOriginalSubject))
		require.NotEmpty(t, d.Headers().Get(bus.HeaderError))
		require.NotEmpty(t, d.Headers().Get(bus.HeaderStreamSequence))
	}
	require.Equal(t, map[string]int{bus.ReasonInvalid: 1, bus.ReasonPermanent: 1, bus.ReasonMaxDeliver: 1}, reasons)

	natstest.Eventually(t, 10*time.Second, func() bool { return h.count(flaky) == 2 && h.count(threat) == 1 }, "flaky event not retried or threat not handled")
	require.Equal(t, 1, h.count(good), "good event handled once")
	require.Equal(t, 1, h.count(poison), "permanent failure not retried")
	require.Equal(t, 2, h.count(hopeless), "MaxDeliver bounds retries")
	settled(t, js, bus.StreamTelemetry, "b1")
	settled(t, js, bus.StreamThreats, "b1-threats")
}

// Pulls are bounded by count and by bytes, and a stopped consumer leaves
// nothing it pulled unsettled.
func TestBatchConsumerBoundsBatchesAndStopsCleanly(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		batchSize int
		maxBytes  int
		wantMax   int
	}{
		{"by count", 100, 1 << 20, 100},
		{"by bytes", 1000, 20 << 10, 100}, // each event ~300 bytes: 20 KiB hold fewer than 100
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, js := setup(t)
			const n = 500
			for j := range n {
				publish(t, js, telemetry(fmt.Sprintf("id-%d-%03d", i, j)))
			}
			h := &rawRecorder{}
			stop := runBatchConsumer(t, js, bus.BatchConfig{
				Sources:   []bus.BatchSource{{Stream: bus.StreamTelemetry, Durable: "b2", FilterSubjects: []string{subject.AllTelemetry}}},
				BatchSize: tt.batchSize, MaxBytes: tt.maxBytes, Workers: 3, FlushInterval: 50 * time.Millisecond,
			}, h)
			natstest.Eventually(t, 10*time.Second, func() bool {
				h.mu.Lock()
				defer h.mu.Unlock()
				return len(h.seen) == n
			}, "not all events handled")
			require.NoError(t, stop())
			h.mu.Lock()
			maxBatch := 0
			for _, b := range h.batches {
				maxBatch = max(maxBatch, b)
			}
			for id, c := range h.seen {
				require.Equal(t, 1, c, "%s handled more than once", id)
			}
			h.mu.Unlock()
			require.LessOrEqual(t, maxBatch, tt.wantMax)
			require.Greater(t, maxBatch, 1, "events were not batched")
			settled(t, js, bus.StreamTelemetry, "b2")
		})
	}
}

// A publisher made with CompleteAs sends complete ECS: ecs.version, the
// agent, the observer and related hosts travel with the event.
func TestPublisherCompletesEvents(t *testing.T) {
	t.Parallel()
	_, js := setup(t)
	ctx := context.Background()
	agent := event.Agent{Type: "whalewatch-collector", Name: "h1", Version: "v9"}
	tests := []struct {
		name string
		opts []bus.PublishOption
		want bool
	}{
		{"plain", nil, false},
		{"complete", []bus.PublishOption{bus.CompleteAs(agent)}, true},
	}
	for _, tt := range tests {
		pub := bus.NewEventPublisher(js, prometheus.NewRegistry(), tt.opts...)
		e := telemetry(event.NewID())
		require.NoError(t, pub.Publish(ctx, subject.ForTelemetry(e), e))
		st, err := js.Stream(ctx, bus.StreamTelemetry)
		require.NoError(t, err)
		info, err := st.Info(ctx)
		require.NoError(t, err)
		raw, err := st.GetMsg(ctx, info.State.LastSeq)
		require.NoError(t, err)
		var got struct {
			ECS      *event.ECS      `json:"ecs"`
			Agent    *event.Agent    `json:"agent"`
			Observer *event.Observer `json:"observer"`
			Related  *event.Related  `json:"related"`
		}
		require.NoError(t, json.Unmarshal(raw.Data, &got), tt.name)
		if !tt.want {
			require.Nil(t, got.ECS, tt.name)
			continue
		}
		require.Equal(t, &event.ECS{Version: event.ECSVersion}, got.ECS, tt.name)
		require.Equal(t, &agent, got.Agent, tt.name)
		require.NotNil(t, got.Observer, tt.name)
		require.Equal(t, "h1", got.Observer.Hostname, tt.name)
		require.Equal(t, []string{"h1"}, got.Related.Hosts, tt.name)
	}
}
