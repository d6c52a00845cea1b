package bustest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
)

// What a consumer pulled and has not handled yet, waiting in its buffer
// behind a slow handler for several AckWaits, is held with in-progress
// acks like the batch being handled: nothing is redelivered while a live
// consumer holds it, so AckWait can be short.
func TestConsumersHoldBufferedWork(t *testing.T) {
	t.Parallel()
	const n = 12
	const ackWait = time.Second
	const work = 250 * time.Millisecond // per message: n of them take 3 × AckWait
	cases := []struct {
		name string
		run  func(t *testing.T, js jetstream.JetStream, durable string, handle func(id string))
	}{
		{"consumer", func(t *testing.T, js jetstream.JetStream, durable string, handle func(string)) {
			runConsumer(t, js, bus.ConsumerConfig{Stream: bus.StreamTelemetry, Durable: durable, AckWait: ackWait},
				bus.Each(func(_ context.Context, e *event.Event) error {
					handle(e.Event.ID)
					return nil
				}))
		}},
		{"batch consumer", func(t *testing.T, js jetstream.JetStream, durable string, handle func(string)) {
			runBatchConsumer(t, js, bus.BatchConfig{
				Sources:   []bus.BatchSource{{Stream: bus.StreamTelemetry, Durable: durable}},
				BatchSize: 4, Workers: 1, MaxBytes: 1 << 20, AckWait: ackWait,
			}, bus.BatchHandlerFunc(func(_ context.Context, payloads [][]byte) []error {
				errs := make([]error, len(payloads))
				for i, p := range payloads {
					e, err := event.Decode(p)
					if err != nil {
						errs[i] = err
						continue
					}
					handle(e.Event.ID)
				}
				return errs
			}))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, js := setup(t)
			for i := range n {
				publish(t, js, telemetry(fmt.Sprintf("held-%d", i)))
			}
			var mu sync.Mutex
			seen := map[string]int{}
			tc.run(t, js, "held", func(id string) {
				mu.Lock()
				seen[id]++
				mu.Unlock()
				time.Sleep(work) // the slow work itself
			})
			settled(t, js, bus.StreamTelemetry, "held")
			mu.Lock()
			defer mu.Unlock()
			require.Len(t, seen, n)
			for id, k := range seen {
				require.Equal(t, 1, k, "%s handled more than once: redelivered while held", id)
			}
		})
	}
}
