package natscluster

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// PublishUntilStored publishes msg with Nats-Msg-Id id until the cluster
// acknowledges it, as a service does through an election (the stream's
// duplicate window stores it once however often it is sent). It fails the
// test when ctx ends first.
func PublishUntilStored(tb testing.TB, ctx context.Context, js jetstream.JetStream, msg *nats.Msg, id string) {
	tb.Helper()
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := js.PublishMsg(pctx, msg, jetstream.WithMsgID(id))
		cancel()
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			tb.Fatalf("publishing %s: %v (last error %v)", id, ctx.Err(), err)
		}
	}
}

// Stored waits up to within until stream holds at least want messages on
// subjects (every subject when none), then reads them all back: how often
// each event id was stored, and the longest time from sent[id] to the
// message's store time. An event whose id is not in sent fails the test;
// check, when set, is called with every event.
func Stored(tb testing.TB, ctx context.Context, js jetstream.JetStream, stream string, subjects []string, want int,
	within time.Duration, sent map[string]time.Time, check func(*event.Event)) (count map[string]int, worst time.Duration) {
	tb.Helper()
	held := func() (uint64, error) {
		st, err := js.Stream(ctx, stream)
		if err != nil {
			return 0, err
		}
		if len(subjects) == 0 {
			info, err := st.Info(ctx)
			if err != nil {
				return 0, err
			}
			return info.State.Msgs, nil
		}
		var n uint64
		for _, s := range subjects {
			info, err := st.Info(ctx, jetstream.WithSubjectFilter(s))
			if err != nil {
				return 0, err
			}
			for _, k := range info.State.Subjects {
				n += k
			}
		}
		return n, nil
	}
	var total uint64
	for deadline := time.Now().Add(within); ; time.Sleep(200 * time.Millisecond) {
		n, err := held()
		if err == nil {
			total = n
			if total >= uint64(want) {
				break
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s holds %d of %d messages after %v (last error %v)", stream, total, want, within, err)
		}
	}
	oc, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: subjects})
	if err != nil {
		tb.Fatalf("reading %s back: %v", stream, err)
	}
	it, err := oc.Messages()
	if err != nil {
		tb.Fatalf("reading %s back: %v", stream, err)
	}
	defer it.Stop()
	count = map[string]int{}
	for range total {
		m, err := it.Next()
		if err != nil {
			tb.Fatalf("reading %s back: %v", stream, err)
		}
		e, err := event.Decode(m.Data())
		if err != nil {
			tb.Fatalf("%s holds a message that is not an event: %v", stream, err)
		}
		if check != nil {
			check(e)
		}
		count[e.Event.ID]++
		md, err := m.Metadata()
		if err != nil {
			tb.Fatalf("metadata of a message of %s: %v", stream, err)
		}
		at, ok := sent[e.Event.ID]
		if !ok {
			tb.Fatalf("%s holds %s, which nothing sent", stream, e.Event.ID)
		}
		worst = max(worst, md.Timestamp.Sub(at))
	}
	return count, worst
}

// Twice is how many stores of count were repeats.
func Twice(count map[string]int) int {
	n := 0
	for _, k := range count {
		n += k - 1
	}
	return n
}
