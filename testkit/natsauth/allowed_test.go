package natsauth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/subject"
)

// Names the services use. They are internal to each service, so they are
// repeated here; a service that renames one fails this test's allowed half
// until deploy/nats/permissions follows.
const (
	hostA, hostB = "web-1", "web-2.example.com" // hostB's token is web-2_example_com

	durableDetector       = "detector"                    // services/detector -consumer
	durableIndexerThreats = "indexer-threats"             // services/indexer ConsumerThreats
	durableIndexerTel     = "indexer-telemetry"           // ConsumerTelemetry
	durableIndexerResp    = "indexer-response"            // ConsumerResponse (indexer branch)
	durableNotifier       = "notifier"                    // services/notifier -consumer, all severities
	durableNotifierHigh   = "notifier-slack-webhook-high" // <consumer>-<destination>-<severity> (notifier branch)
	partitionsStream      = "WHALEWATCH_DETECTOR_PARTITIONS"
	bucketDone            = "whalewatch_actions_done" // collector
	bucketLeases          = "whalewatch_detector_leases"
	bucketBaselines       = "whalewatch_baselines"
	bucketLedger          = "whalewatch_notifier_sent"
	bucketHolds           = "whalewatch_notifier_holds"
)

func collector(host string) string { return "collector-" + subject.Token(host) }

func durableCollector(host string) string { return "collector-actions-" + subject.Token(host) }

// env is one server with every identity connected.
type env struct {
	d       Deployment
	s       *server.Server
	clients map[string]*Client
}

var identities = []string{"detector", "indexer", "notifier", "setup", "admin", collector(hostA), collector(hostB)}

func newEnv(tb testing.TB, so ServerOptions) *env {
	tb.Helper()
	d := Deploy(tb, hostA, hostB)
	s := Server(tb, d, so)
	e := &env{d: d, s: s, clients: map[string]*Client{}}
	for _, id := range identities {
		e.clients[id] = Connect(tb, id, d.Config(s, id))
	}
	return e
}

func (e *env) js(id string) jetstream.JetStream { return e.clients[id].JS }

func testEvent(host string) *event.Event {
	return &event.Event{
		Timestamp:  time.Now().UTC(),
		Event:      event.Meta{ID: event.NewID(), Kind: event.KindEvent, Action: "test"},
		Host:       event.Host{Name: host},
		Container:  &event.Container{ID: "c1", Name: "web"},
		Whalewatch: event.Whalewatch{SchemaVersion: event.SchemaVersion, Telemetry: event.TelemetryProcess},
	}
}

// publish publishes a test event about host, and about container c1 unless
// subj is host telemetry.
func publish(ctx context.Context, js jetstream.JetStream, subj, host string) error {
	ev := testEvent(host)
	if strings.Contains(subj, "."+subject.HostScope+".") {
		ev.Container = nil
	}
	return bus.NewEventPublisher(js, prometheus.NewRegistry()).Publish(ctx, subj, ev)
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// consume runs cfg as bus.Consumer (the services' consumer) with h until h
// has seen n events and every one is settled, then stops it.
func consume(tb testing.TB, e *env, id string, cfg bus.ConsumerConfig, n int, h func(context.Context, *event.Event) error) {
	tb.Helper()
	var seen atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	c := bus.NewConsumer(e.js(id), cfg, bus.Each(func(ctx context.Context, ev *event.Event) error {
		defer seen.Add(1)
		return h(ctx, ev)
	}), bus.NewConsumerMetrics(prometheus.NewRegistry()), quiet)
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	admin := e.js("admin")
	waitFor(tb, 10*time.Second, func() bool {
		if int(seen.Load()) < n {
			return false
		}
		ci, err := admin.Consumer(context.Background(), cfg.Stream, cfg.Durable)
		if err != nil {
			return false
		}
		info, err := ci.Info(context.Background())
		return err == nil && info.NumAckPending == 0 && info.AckFloor.Stream > 0
	}, "%s: consumer %s did not handle and settle %d messages", id, cfg.Durable, n)
	cancel()
	require.NoError(tb, <-done)
}

func waitFor(tb testing.TB, timeout time.Duration, cond func() bool, msg string, args ...any) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf(msg, args...)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestEveryIdentityCanDoItsJob runs, as each identity, the JetStream calls
// its service makes (pkg/bus for streams, publishing and consuming; the
// jetstream KV calls of its buckets), in pipeline order, and requires that
// none is refused. NATSAUTH_TRACE=file writes the server's protocol trace
// there: the subjects the services really send.
func TestEveryIdentityCanDoItsJob(t *testing.T) {
	so := ServerOptions{}
	var trace bytes.Buffer
	if path := os.Getenv("NATSAUTH_TRACE"); path != "" {
		so.Trace, so.Log = true, &syncWriter{w: &trace}
		t.Cleanup(func() {
			_ = os.WriteFile(path+".raw", trace.Bytes(), 0o644)
			_ = os.WriteFile(path, clientSubjects(trace.String()), 0o644)
		})
	}
	e := newEnv(t, so)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("setup creates the streams, every service finds them", func(t *testing.T) {
		// Before setup ran, a service cannot start: the error names the
		// stream and the setup job. (Own connections: the refusals are
		// expected here, not on the clients checked at the end.)
		early := Connect(t, "detector", e.d.Config(e.s, "detector"))
		short, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		err := bus.EnsureStreams(short, early.JS, DefaultStreams())
		require.ErrorContains(t, err, "stream WHALEWATCH_THREATS does not exist")
		require.ErrorContains(t, err, "setup identity")
		require.NotNil(t, early.Violation(`Publish to "$JS.API.STREAM.CREATE.WHALEWATCH_THREATS"`, 5*time.Second))
		require.NoError(t, bus.EnsureStreams(ctx, e.js("setup"), DefaultStreams()))
		for _, id := range []string{"detector", "indexer", "notifier", collector(hostA), collector(hostB)} {
			require.NoError(t, bus.EnsureStreams(ctx, e.js(id), DefaultStreams()), id)
		}
		// Settings that differ from a service's flags are the setup job's
		// to apply: the service starts with the streams as they are.
		other := DefaultStreams()
		other.Threats.MaxAge = time.Hour
		differs := Connect(t, "indexer", e.d.Config(e.s, "indexer"))
		require.NoError(t, bus.EnsureStreams(ctx, differs.JS, other))
		require.NotNil(t, differs.Violation(`Publish to "$JS.API.STREAM.UPDATE.WHALEWATCH_THREATS"`, 5*time.Second))
		st, err := e.js("admin").Stream(ctx, bus.StreamThreats)
		require.NoError(t, err)
		require.Equal(t, DefaultStreams().Threats.MaxAge, st.CachedInfo().Config.MaxAge, "a service updated a stream")
		require.NoError(t, bus.EnsureStreams(ctx, e.js("setup"), other))
		st, err = e.js("admin").Stream(ctx, bus.StreamThreats)
		require.NoError(t, err)
		require.Equal(t, time.Hour, st.CachedInfo().Config.MaxAge, "setup updates the streams")
		require.NoError(t, bus.EnsureStreams(ctx, e.js("setup"), DefaultStreams()))
	})

	t.Run("collectors publish their host's telemetry", func(t *testing.T) {
		for _, h := range []string{hostA, hostB} {
			require.NoError(t, publish(ctx, e.js(collector(h)), subject.Telemetry(h, "c1", event.TelemetryProcess), h))
			require.NoError(t, publish(ctx, e.js(collector(h)), subject.HostTelemetry(h, event.TelemetryLifecycle), h))
		}
	})

	t.Run("detector consumes telemetry, publishes threats and requests", func(t *testing.T) {
		pub := bus.NewEventPublisher(e.js("detector"), prometheus.NewRegistry())
		consume(t, e, "detector", bus.ConsumerConfig{Stream: bus.StreamTelemetry, Durable: durableDetector,
			FilterSubjects: []string{subject.AllTelemetry}}, 4, func(ctx context.Context, ev *event.Event) error {
			if ev.Container == nil {
				return nil
			}
			th := testEvent(ev.Host.Name)
			th.Event.Kind, th.Rule, th.Whalewatch.Severity = event.KindAlert, &event.Rule{ID: "r1"}, event.SeverityHigh
			if err := pub.Publish(ctx, subject.Threat(event.SeverityHigh, "r1"), th); err != nil {
				return err
			}
			return pub.Publish(ctx, subject.ActionRequest(ev.Host.Name, "c1"), testEvent(ev.Host.Name))
		})
	})

	t.Run("detector partitions telemetry and keeps leases and baselines", func(t *testing.T) {
		js := e.js("detector")
		// partition.EnsureStream: look, read the telemetry stream, create.
		_, err := js.Stream(ctx, partitionsStream)
		require.ErrorIs(t, err, jetstream.ErrStreamNotFound)
		tel, err := js.Stream(ctx, bus.StreamTelemetry)
		require.NoError(t, err)
		info, err := tel.Info(ctx)
		require.NoError(t, err)
		streams := DefaultStreams()
		_, err = js.CreateStream(ctx, jetstream.StreamConfig{
			Name: partitionsStream,
			Sources: []*jetstream.StreamSource{{Name: bus.StreamTelemetry, OptStartSeq: info.State.LastSeq + 1,
				SubjectTransforms: []jetstream.SubjectTransformConfig{{
					Source:      subject.TelemetryPrefix + ".*.*.*",
					Destination: "whalewatch.detector.{{partition(2,2)}}.{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}",
				}}}},
			Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage, MaxAge: streams.Telemetry.MaxAge,
			MaxBytes: streams.Telemetry.MaxBytes, MaxMsgs: -1, Replicas: 1, Duplicates: streams.Duplicates,
		})
		require.NoError(t, err)
		st, err := js.Stream(ctx, partitionsStream)
		require.NoError(t, err)
		_, err = st.Info(ctx)
		require.NoError(t, err)
		st, err = e.js("admin").Stream(ctx, partitionsStream)
		require.NoError(t, err)
		// One collector message, sourced into one partition.
		require.NoError(t, publish(ctx, e.js(collector(hostA)), subject.Telemetry(hostA, "c1", event.TelemetryProcess), hostA))
		p := -1
		waitFor(t, 10*time.Second, func() bool {
			for i := range 2 {
				if _, err := st.GetLastMsgForSubject(ctx, fmt.Sprintf("whalewatch.detector.%d.>", i)); err == nil {
					p = i
					return true
				}
			}
			return false
		}, "telemetry not sourced into the partitions")
		consume(t, e, "detector", bus.ConsumerConfig{Stream: partitionsStream, Durable: fmt.Sprintf("%s-p%d", durableDetector, p),
			FilterSubjects: []string{fmt.Sprintf("whalewatch.detector.%d.>", p)}}, 1, func(context.Context, *event.Event) error { return nil })

		leases, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucketLeases, TTL: 10 * time.Second, Storage: jetstream.MemoryStorage})
		require.NoError(t, err)
		_, err = leases.Put(ctx, "members.r1", []byte("now"))
		require.NoError(t, err)
		rev, err := leases.Create(ctx, "locks.0", []byte("r1"))
		require.NoError(t, err)
		rev, err = leases.Update(ctx, "locks.0", []byte("r1"), rev)
		require.NoError(t, err)
		keys, err := leases.ListKeysFiltered(ctx, "members.*")
		require.NoError(t, err)
		var members []string
		for k := range keys.Keys() {
			members = append(members, k)
		}
		require.Equal(t, []string{"members.r1"}, members)
		require.NoError(t, leases.Delete(ctx, "locks.0", jetstream.LastRevision(rev)))

		base, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucketBaselines, Storage: jetstream.FileStorage})
		require.NoError(t, err)
		w, err := base.WatchAll(ctx)
		require.NoError(t, err)
		select {
		case entry := <-w.Updates():
			require.Nil(t, entry, "an empty bucket's watch starts with the end-of-initial-values marker")
		case <-ctx.Done():
			t.Fatal("watch gave nothing")
		}
		brev, err := base.Create(ctx, "nginx", []byte("{}"))
		require.NoError(t, err)
		got, err := base.Get(ctx, "nginx")
		require.NoError(t, err)
		_, err = base.Update(ctx, "nginx", []byte("{}"), got.Revision())
		require.NoError(t, err)
		require.Equal(t, brev, got.Revision())
		require.NoError(t, w.Stop())
	})

	t.Run("collectors answer their host's requests", func(t *testing.T) {
		for _, h := range []string{hostA, hostB} {
			js := e.js(collector(h))
			// As the executor opens it (pkg/claim): read first, create when
			// missing, never update (that is refused).
			done, err := bus.OpenKeyValue(ctx, js, jetstream.KeyValueConfig{Bucket: bucketDone, History: 1, TTL: time.Hour, Storage: jetstream.FileStorage}, nil)
			require.NoError(t, err)
			pub := bus.NewEventPublisher(js, prometheus.NewRegistry())
			consume(t, e, collector(h), bus.ConsumerConfig{Stream: bus.StreamActions, Durable: durableCollector(h),
				FilterSubjects: []string{subject.ActionRequestsFor(h)}, BatchSize: 1}, 1, func(ctx context.Context, ev *event.Event) error {
				// The collector's key: its host's token, then the request id.
				key := subject.Token(h) + "." + ev.Event.ID
				if _, err := done.Get(ctx, key); !errors.Is(err, jetstream.ErrKeyNotFound) {
					return fmt.Errorf("done bucket: %w", err)
				}
				if _, err := done.Put(ctx, key, []byte("{}")); err != nil {
					return err
				}
				if _, err := done.Get(ctx, key); err != nil {
					return fmt.Errorf("done bucket, own key: %w", err)
				}
				return pub.Publish(ctx, subject.ActionResult(h, "c1"), testEvent(h))
			})
		}
	})

	t.Run("indexer consumes threats, telemetry and actions and dead-letters", func(t *testing.T) {
		consume(t, e, "indexer", bus.ConsumerConfig{Stream: bus.StreamThreats, Durable: durableIndexerThreats,
			FilterSubjects: []string{subject.AllThreats}, BatchSize: 10}, 2, func(context.Context, *event.Event) error {
			return bus.Permanent(errors.New("mapping conflict")) // dead-lettered by bus.Consumer
		})
		consume(t, e, "indexer", bus.ConsumerConfig{Stream: bus.StreamTelemetry, Durable: durableIndexerTel,
			FilterSubjects: []string{subject.AllTelemetry}, BatchSize: 10}, 5, func(context.Context, *event.Event) error { return nil })
		// The indexer branch pulls with Fetch, two filters on the actions stream.
		js := e.js("indexer")
		cons, err := js.CreateOrUpdateConsumer(ctx, bus.StreamActions, jetstream.ConsumerConfig{Durable: durableIndexerResp,
			FilterSubjects: []string{subject.AllRequests, subject.AllResults}, AckPolicy: jetstream.AckExplicitPolicy})
		require.NoError(t, err)
		batch, err := cons.Fetch(10, jetstream.FetchMaxWait(2*time.Second))
		require.NoError(t, err)
		n := 0
		for m := range batch.Messages() {
			require.NoError(t, m.DoubleAck(ctx))
			n++
		}
		require.NoError(t, batch.Error())
		require.Equal(t, 4, n, "two requests and two results")

		dl, err := e.js("admin").Stream(ctx, bus.StreamDeadLetter)
		require.NoError(t, err)
		_, err = dl.GetLastMsgForSubject(ctx, subject.DeadLetter(durableIndexerThreats))
		require.NoError(t, err, "the indexer's dead letters are stored")
	})

	t.Run("notifier consumes threats and keeps its ledger and holds", func(t *testing.T) {
		js := e.js("notifier")
		consume(t, e, "notifier", bus.ConsumerConfig{Stream: bus.StreamThreats, Durable: durableNotifier,
			FilterSubjects: subject.ThreatsAtLeast(event.SeverityLow)}, 2, func(context.Context, *event.Event) error { return nil })
		// The notifier branch: one consumer per destination and severity,
		// looked up, created from a start time, then updated.
		_, err := js.Consumer(ctx, bus.StreamThreats, durableNotifierHigh)
		require.ErrorIs(t, err, jetstream.ErrConsumerNotFound)
		start := time.Now().Add(-time.Hour)
		cfg := jetstream.ConsumerConfig{Durable: durableNotifierHigh, FilterSubject: subject.ThreatsPrefix + ".high.>",
			AckPolicy: jetstream.AckExplicitPolicy, MaxDeliver: -1, DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &start}
		_, err = js.CreateConsumer(ctx, bus.StreamThreats, cfg)
		require.NoError(t, err)
		cfg.Description = "updated"
		cons, err := js.UpdateConsumer(ctx, bus.StreamThreats, cfg)
		require.NoError(t, err)
		batch, err := cons.Fetch(2, jetstream.FetchMaxWait(2*time.Second))
		require.NoError(t, err)
		n := 0
		for m := range batch.Messages() {
			require.NoError(t, m.Ack())
			n++
		}
		require.Equal(t, 2, n)

		// pkg/claim and the notifier's gate: KeyValue, then CreateKeyValue
		// when missing (never an update: the notifier may not update a bucket).
		_, err = js.KeyValue(ctx, bucketLedger)
		require.ErrorIs(t, err, jetstream.ErrBucketNotFound)
		ledger, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucketLedger, TTL: time.Hour, Storage: jetstream.FileStorage})
		require.NoError(t, err)
		_, err = js.KeyValue(ctx, bucketLedger)
		require.NoError(t, err)
		rev, err := ledger.Create(ctx, "slack/e1", []byte("held"))
		require.NoError(t, err)
		rev, err = ledger.Update(ctx, "slack/e1", []byte("done"), rev)
		require.NoError(t, err)
		got, err := ledger.Get(ctx, "slack/e1")
		require.NoError(t, err)
		require.Equal(t, rev, got.Revision())
		require.NoError(t, ledger.Delete(ctx, "slack/e1", jetstream.LastRevision(rev)))
		_, err = ledger.Status(ctx)
		require.NoError(t, err)

		holds, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucketHolds, TTL: 6 * time.Minute, History: 1, Storage: jetstream.MemoryStorage})
		require.NoError(t, err)
		w, err := holds.Watch(ctx, "slack")
		require.NoError(t, err)
		<-w.Updates()
		_, err = holds.Put(ctx, "slack", []byte("1"))
		require.NoError(t, err)
		select {
		case entry := <-w.Updates():
			require.Equal(t, "slack", entry.Key())
		case <-ctx.Done():
			t.Fatal("watch saw no put")
		}
		require.NoError(t, w.Stop())
	})

	for _, id := range identities {
		require.Empty(t, e.clients[id].Violations(), "%s was refused something it needs", id)
	}
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

var clientOp = regexp.MustCompile(`:whalewatch-([^"]+)".*<<- \[(H?PUB|SUB) (\S+)`)

// clientSubjects reduces a server trace to "identity OP subject" lines.
func clientSubjects(trace string) []byte {
	seen := map[string]bool{}
	for _, line := range strings.Split(trace, "\n") {
		if m := clientOp.FindStringSubmatch(line); m != nil {
			seen[m[1]+" "+m[2]+" "+m[3]] = true
		}
	}
	var out []string
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return []byte(strings.Join(out, "\n") + "\n")
}
