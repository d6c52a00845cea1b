package bustest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
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
	"github.com/whalewatch/whalewatch/testkit/natstest"
)

func streamsConfig(tb testing.TB) bus.StreamsConfig {
	tb.Helper()
	var c bus.Config
	c.RegisterFlags(flagSet())
	require.NoError(tb, c.Validate())
	return c.Streams
}

func setup(tb testing.TB) (*nats.Conn, jetstream.JetStream) {
	tb.Helper()
	s := natstest.Server(tb)
	nc, js := natstest.Connect(tb, s)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(tb, bus.EnsureStreams(ctx, js, streamsConfig(tb)))
	return nc, js
}

func telemetry(id string) *event.Event {
	return &event.Event{
		Timestamp:  time.Now().UTC(),
		Event:      event.Meta{ID: id, Kind: event.KindEvent, Action: "test"},
		Host:       event.Host{Name: "h1"},
		Container:  &event.Container{ID: "c1", Name: "web"},
		Whalewatch: event.Whalewatch{SchemaVersion: event.SchemaVersion, Telemetry: event.TelemetryProcess},
	}
}

func TestEnsureStreamsIsIdempotentAndAppliesLimits(t *testing.T) {
	t.Parallel()
	_, js := setup(t)
	ctx := context.Background()
	cfg := streamsConfig(t)
	cfg.Telemetry.MaxAge = time.Hour
	require.NoError(t, bus.EnsureStreams(ctx, js, cfg))
	require.NoError(t, bus.EnsureStreams(ctx, js, cfg))
	st, err := js.Stream(ctx, bus.StreamTelemetry)
	require.NoError(t, err)
	info, err := st.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, time.Hour, info.Config.MaxAge)
	require.Equal(t, []string{subject.AllTelemetry}, info.Config.Subjects)
	for _, name := range []string{bus.StreamThreats, bus.StreamActions, bus.StreamDeadLetter} {
		_, err := js.Stream(ctx, name)
		require.NoError(t, err, name)
	}
}

func TestPublishStoresAnEventIDOnce(t *testing.T) {
	t.Parallel()
	_, js := setup(t)
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	pub := bus.NewEventPublisher(js, reg)
	e := telemetry(event.NewID())
	subj := subject.ForTelemetry(e)
	require.NoError(t, pub.Publish(ctx, subj, e))
	require.NoError(t, pub.Publish(ctx, subj, e)) // a retry
	st, err := js.Stream(ctx, bus.StreamTelemetry)
	require.NoError(t, err)
	info, err := st.Info(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, info.State.Msgs)
	require.Equal(t, 1.0, counter(t, reg, "whalewatch_bus_published_total", "stored"))
	require.Equal(t, 1.0, counter(t, reg, "whalewatch_bus_published_total", "duplicate"))
}

// counter returns the value of counter name with label outcome.
func counter(tb testing.TB, reg *prometheus.Registry, name, outcome string) float64 {
	tb.Helper()
	mfs, err := reg.Gather()
	require.NoError(tb, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" && l.GetValue() == outcome {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// recorder is a handler whose outcome per event id the test decides.
type recorder struct {
	mu      sync.Mutex
	seen    map[string]int
	batches []int
	outcome func(e *event.Event, attempt int) error
}

func (r *recorder) Handle(_ context.Context, batch []*event.Event) []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seen == nil {
		r.seen = map[string]int{}
	}
	r.batches = append(r.batches, len(batch))
	errs := make([]error, len(batch))
	for i, e := range batch {
		r.seen[e.Event.ID]++
		if r.outcome != nil {
			errs[i] = r.outcome(e, r.seen[e.Event.ID])
		}
	}
	return errs
}

func (r *recorder) count(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen[id]
}

// runConsumer runs a consumer until the returned stop is called (or the test
// ends); stop returns Run's error, or fails the test if Run does not return.
func runConsumer(tb testing.TB, js jetstream.JetStream, cfg bus.ConsumerConfig, h bus.Handler) (stop func() error) {
	tb.Helper()
	c := bus.NewConsumer(js, cfg, h, bus.NewConsumerMetrics(prometheus.NewRegistry()), testLog())
	return runUntilStopped(tb, c.Run)
}

// testLog discards logs unless WHALEWATCH_TEST_LOG is set.
func testLog() *slog.Logger {
	var w io.Writer = io.Discard
	if os.Getenv("WHALEWATCH_TEST_LOG") != "" {
		w = os.Stderr
	}
	return slog.New(slog.NewTextHandler(w, nil))
}

// runUntilStopped runs run until the returned stop is called (or the test
// ends); stop returns run's error, or an error if run does not return.
func runUntilStopped(tb testing.TB, run func(context.Context) error) (stop func() error) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(20 * time.Second):
				err = errors.New("consumer did not stop within 20 s")
			}
		})
		return err
	}
	tb.Cleanup(func() { require.NoError(tb, stop()) })
	return stop
}

func publish(tb testing.TB, js jetstream.JetStream, e *event.Event) {
	tb.Helper()
	data, err := event.Marshal(e)
	require.NoError(tb, err)
	_, err = js.Publish(context.Background(), subject.ForTelemetry(e), data, jetstream.WithMsgID(e.Event.ID))
	require.NoError(tb, err)
}

// deadLetters returns the dead letters of consumer, waiting until want arrived.
func deadLetters(tb testing.TB, js jetstream.JetStream, consumer string, want int) []jetstream.Msg {
	tb.Helper()
	ctx := context.Background()
	c, err := js.OrderedConsumer(ctx, bus.StreamDeadLetter, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject.DeadLetter(consumer)}})
	require.NoError(tb, err)
	var out []jetstream.Msg
	deadline := time.Now().Add(10 * time.Second)
	for len(out) < want && time.Now().Before(deadline) {
		m, err := c.Next(jetstream.FetchMaxWait(200 * time.Millisecond))
		if err == nil {
			out = append(out, m)
		}
	}
	require.Len(tb, out, want, "dead letters")
	return out
}

func TestConsumerAcksDeadLettersAndRetries(t *testing.T) {
	t.Parallel()
	nc, js := setup(t)
	good, flaky, poison, hopeless := event.NewID(), event.NewID(), event.NewID(), event.NewID()
	h := &recorder{outcome: func(e *event.Event, attempt int) error {
		switch e.Event.ID {
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
	runConsumer(t, js, bus.ConsumerConfig{
		Stream: bus.StreamTelemetry, Durable: "t1", FilterSubjects: []string{subject.AllTelemetry},
		BatchSize: 10, FlushInterval: 20 * time.Millisecond, MaxDeliver: 2, MaxBackoff: 50 * time.Millisecond,
	}, h)

	for _, id := range []string{poison, good, flaky, hopeless} {
		publish(t, js, telemetry(id))
	}
	// Undecodable bytes and an event of an unknown major version.
	require.NoError(t, nc.Publish("whalewatch.telemetry.h1.c1.process", []byte("{not json")))
	bad := telemetry(event.NewID())
	bad.Whalewatch.SchemaVersion = "9.0"
	publish(t, js, bad)

	dl := deadLetters(t, js, "t1", 4)
	reasons := map[string]int{}
	for _, d := range dl {
		reasons[d.Headers().Get(bus.HeaderReason)]++
		require.Equal(t, "whalewatch.telemetry.h1.c1.process", d.Headers().Get(bus.HeaderOriginalSubject))
		require.NotEmpty(t, d.Headers().Get(bus.HeaderError))
	}
	require.Equal(t, map[string]int{bus.ReasonInvalid: 2, bus.ReasonPermanent: 1, bus.ReasonMaxDeliver: 1}, reasons)

	natstest.Eventually(t, 10*time.Second, func() bool { return h.count(flaky) == 2 }, "flaky event not retried")
	require.Equal(t, 1, h.count(good), "good event handled once")
	require.Equal(t, 1, h.count(poison), "permanent failure not retried")
	require.Equal(t, 2, h.count(hopeless), "MaxDeliver bounds retries")

	// Every message is settled: nothing left pending or unacknowledged.
	cons, err := js.Consumer(context.Background(), bus.StreamTelemetry, "t1")
	require.NoError(t, err)
	natstest.Eventually(t, 5*time.Second, func() bool {
		info, err := cons.Info(context.Background())
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	}, "messages left unsettled")
}

func TestConsumerBatchesAndStopsCleanly(t *testing.T) {
	t.Parallel()
	_, js := setup(t)
	const n = 250
	for i := 0; i < n; i++ {
		publish(t, js, telemetry(fmt.Sprintf("id-%03d", i)))
	}
	h := &recorder{}
	stop := runConsumer(t, js, bus.ConsumerConfig{
		Stream: bus.StreamTelemetry, Durable: "t2", FilterSubjects: []string{subject.AllTelemetry},
		BatchSize: 100, FlushInterval: 50 * time.Millisecond,
	}, h)
	natstest.Eventually(t, 10*time.Second, func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return len(h.seen) == n
	}, "not all events handled")
	h.mu.Lock()
	maxBatch := 0
	for _, b := range h.batches {
		maxBatch = max(maxBatch, b)
	}
	h.mu.Unlock()
	require.LessOrEqual(t, maxBatch, 100)
	require.Greater(t, maxBatch, 1, "events were not batched")

	require.NoError(t, stop())
}

// A handler that takes longer than AckWait keeps its message: the consumer
// sends in-progress acks while it works, so the server redelivers nothing.
func TestConsumerHoldsSlowWork(t *testing.T) {
	t.Parallel()
	_, js := setup(t)
	var mu sync.Mutex
	handled := 0
	runConsumer(t, js, bus.ConsumerConfig{Stream: bus.StreamTelemetry, Durable: "slow", AckWait: time.Second},
		bus.Each(func(ctx context.Context, e *event.Event) error {
			mu.Lock()
			handled++
			mu.Unlock()
			time.Sleep(2500 * time.Millisecond) // the slow work itself, 2.5 × AckWait
			return nil
		}))
	publish(t, js, telemetry("slow-1"))
	ctx := context.Background()
	require.Eventually(t, func() bool {
		c, err := js.Consumer(ctx, bus.StreamTelemetry, "slow")
		if err != nil {
			return false
		}
		info, err := c.Info(ctx)
		return err == nil && info.AckFloor.Stream == 1 && info.NumAckPending == 0
	}, 20*time.Second, 50*time.Millisecond, "the message is acked")
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, 1, handled, "handled once, never redelivered while held")
}
