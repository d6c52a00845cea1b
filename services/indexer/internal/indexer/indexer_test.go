package indexer

import (
	"context"
	"errors"
	"flag"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/admin"
	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/subject"
	"github.com/whalewatch/whalewatch/testkit/esstub"
	"github.com/whalewatch/whalewatch/testkit/natstest"
)

const wait = 15 * time.Second

// env is an in-process NATS with the whalewatch streams, an Elasticsearch
// stub, and a publisher, in which tests start the indexer.
type env struct {
	t    *testing.T
	es   *esstub.Server
	nats *server.Server
	js   jetstream.JetStream
	pub  *bus.EventPublisher
	srv  *admin.Server
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ns := natstest.Server(t)
	_, js := natstest.Connect(t, ns)
	var c bus.Config
	c.Streams.RegisterFlags(flag.NewFlagSet("streams", flag.ContinueOnError))
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	require.NoError(t, bus.EnsureStreams(ctx, js, c.Streams))
	return &env{t: t, es: esstub.New(t), nats: ns, js: js, pub: bus.NewEventPublisher(js, prometheus.NewRegistry())}
}

// start runs the indexer, configured from flags like main does, until the
// test ends; it must then stop cleanly.
func (e *env) start(args ...string) {
	e.t.Helper()
	e.startWith(prometheus.NewRegistry(), args...)
}

// startWith is start with the metrics registry reg.
func (e *env) startWith(reg *prometheus.Registry, args ...string) {
	e.t.Helper()
	cfg, err := parseConfig(e.t, append([]string{
		"-nats-url", e.nats.ClientURL(),
		"-elasticsearch-url", e.es.URL,
		"-http-addr", "127.0.0.1:0",
		"-flush-interval", "20ms",
		"-retry-max-backoff", "1s",
		"-elasticsearch-timeout", "5s",
		"-shutdown-timeout", "5s",
	}, args...), nil)
	require.NoError(e.t, err)
	ctx, cancel := context.WithCancel(context.Background())
	srvc := make(chan *admin.Server, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, cfg, testLogger(e.t), reg, func(s *admin.Server) { srvc <- s })
	}()
	e.t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(e.t, err)
		case <-time.After(wait):
			e.t.Error("the indexer did not stop")
		}
	})
	e.srv = <-srvc
	natstest.Eventually(e.t, wait, func() bool { return e.srv.Addr() != "" }, "admin endpoint not listening")
}

// ready returns the /readyz status and body.
func (e *env) ready() (int, string) {
	e.t.Helper()
	res, err := http.Get("http://" + e.srv.Addr() + "/readyz")
	require.NoError(e.t, err)
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func (e *env) publish(events ...*event.Event) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	for _, ev := range events {
		subj := subject.ForThreat(ev)
		switch {
		case ev.Event.Dataset == event.DatasetResponse:
			subj = subject.ActionResult(ev.Host.Name, ev.Container.ID)
		case ev.Event.Kind == event.KindEvent:
			subj = subject.ForTelemetry(ev)
		}
		require.NoError(e.t, e.pub.Publish(ctx, subj, ev))
	}
}

// consumer returns a durable's state, or nil when it does not exist.
func (e *env) consumer(stream, durable string) *jetstream.ConsumerInfo {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, err := e.js.Consumer(ctx, stream, durable)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil
	}
	require.NoError(e.t, err)
	info, err := c.Info(ctx)
	require.NoError(e.t, err)
	return info
}

// settled reports whether the durable exists and has nothing left to do.
func (e *env) settled(stream, durable string) bool {
	info := e.consumer(stream, durable)
	return info != nil && info.NumAckPending == 0 && info.NumPending == 0
}

func (e *env) deadLetters() uint64 {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	s, err := e.js.Stream(ctx, bus.StreamDeadLetter)
	require.NoError(e.t, err)
	info, err := s.Info(ctx)
	require.NoError(e.t, err)
	return info.State.Msgs
}

// requireIndexed checks that each event is stored once, in its data stream,
// with _id = event.id and the JSON as published.
func (e *env) requireIndexed(events ...*event.Event) {
	e.t.Helper()
	for _, ev := range events {
		ds, err := DataStream(ev, "default")
		require.NoError(e.t, err)
		var found []esstub.Doc
		for _, d := range e.es.Docs(ds) {
			if d.ID == ev.Event.ID {
				found = append(found, d)
			}
		}
		require.Len(e.t, found, 1, "event %s in %s", ev.Event.ID, ds)
		require.Equal(e.t, storedJSON(e.t, ev), string(found[0].Source))
		require.Equal(e.t, "create", found[0].Op)
		dataset, _ := Dataset(ev)
		require.Equal(e.t, templateOf(dataset), e.es.DataStreams()[ds].Template, "data stream %s", ds)
	}
}

// requireTemplatesFirst checks that no bulk request preceded the templates.
func (e *env) requireTemplatesFirst() {
	e.t.Helper()
	tmpl := e.es.Templates()
	comp, ok := tmpl.Component[ComponentTemplate]
	require.True(e.t, ok, "component template installed")
	bulks := e.es.BulkRequests()
	require.NotEmpty(e.t, bulks)
	for _, name := range IndexTemplates() {
		idx, ok := tmpl.Index[name]
		require.True(e.t, ok, "index template %s installed", name)
		require.Less(e.t, comp.Seq, idx.Seq)
		require.Greater(e.t, bulks[0].Seq, idx.Seq, "a bulk request came before the index template %s", name)
	}
}

func TestIndexesThreatsAndTelemetry(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start()
	natstest.Eventually(t, wait, func() bool { s, _ := e.ready(); return s == http.StatusOK }, "never ready")

	events := []*event.Event{threat("suspicious-tool-netcat")}
	for _, k := range event.Telemetries {
		events = append(events, telemetry(k))
	}
	e.publish(events...)
	natstest.Eventually(t, wait, func() bool { return len(e.es.AllDocs()) == len(events) }, "events not indexed")
	e.requireIndexed(events...)
	e.requireTemplatesFirst()
	require.Len(t, e.es.Docs("logs-whalewatch.threat-default"), 1)
	require.Len(t, e.es.Docs("logs-whalewatch.process-default"), 1)

	// The same event stored twice in the stream (a publisher retry after the
	// duplicate window): Elasticsearch answers 409, the indexer acks it.
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	again := nats.NewMsg(subject.ForThreat(events[0]))
	again.Data = []byte(marshal(t, events[0]))
	_, err := e.js.PublishMsg(ctx, again, jetstream.WithMsgID("another-id"))
	require.NoError(t, err)
	natstest.Eventually(t, wait, func() bool {
		info := e.consumer(bus.StreamThreats, ConsumerThreats)
		return info.AckFloor.Stream == 2 && info.NumAckPending == 0
	}, "the duplicate was not acked")
	e.requireIndexed(events[0])
	require.Zero(t, e.deadLetters())
}

func TestWaitsForElasticsearchAtStart(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.es.SetDown(true)
	e.start()
	events := []*event.Event{threat("a"), telemetry(event.TelemetryProcess), threat("b")}
	e.publish(events...)

	natstest.Eventually(t, wait, func() bool {
		s, body := e.ready()
		return s == http.StatusServiceUnavailable && strings.Contains(body, "templates not installed") && strings.Contains(body, "elasticsearch")
	}, "readiness should report Elasticsearch and the templates")
	// Consuming has not started: the events wait in JetStream.
	require.Nil(t, e.consumer(bus.StreamThreats, ConsumerThreats))
	require.Nil(t, e.consumer(bus.StreamTelemetry, ConsumerTelemetry))

	e.es.SetDown(false)
	natstest.Eventually(t, wait, func() bool { return len(e.es.AllDocs()) == len(events) }, "events not indexed after Elasticsearch came up")
	e.requireIndexed(events...)
	e.requireTemplatesFirst()
	natstest.Eventually(t, wait, func() bool { s, _ := e.ready(); return s == http.StatusOK }, "never ready")
}

func TestNothingLostWhileElasticsearchIsDown(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start()
	natstest.Eventually(t, wait, func() bool { s, _ := e.ready(); return s == http.StatusOK }, "never ready")

	e.es.SetDown(true)
	var threats, telem []*event.Event
	for i := range 30 {
		threats = append(threats, threat("rule"))
		telem = append(telem, telemetry(event.Telemetries[i%len(event.Telemetries)]))
	}
	e.publish(append(threats, telem...)...)

	// Both consumers tried, failed, and will try again.
	natstest.Eventually(t, wait, func() bool {
		return e.consumer(bus.StreamThreats, ConsumerThreats).NumRedelivered > 0 &&
			e.consumer(bus.StreamTelemetry, ConsumerTelemetry).NumRedelivered > 0
	}, "no redelivery while Elasticsearch is down")
	for _, c := range []struct{ stream, durable string }{{bus.StreamThreats, ConsumerThreats}, {bus.StreamTelemetry, ConsumerTelemetry}} {
		info := e.consumer(c.stream, c.durable)
		require.Zero(t, info.AckFloor.Consumer, "%s acked something while Elasticsearch was down", c.durable)
		require.EqualValues(t, 30, uint64(info.NumAckPending)+info.NumPending, c.durable)
	}
	require.Empty(t, e.es.AllDocs())
	require.Zero(t, e.deadLetters())
	s, body := e.ready()
	require.Equal(t, http.StatusServiceUnavailable, s, body)

	e.es.SetDown(false)
	all := append(threats, telem...)
	natstest.Eventually(t, wait, func() bool { return len(e.es.AllDocs()) == len(all) }, "not everything was indexed after recovery")
	natstest.Eventually(t, wait, func() bool {
		return e.settled(bus.StreamThreats, ConsumerThreats) && e.settled(bus.StreamTelemetry, ConsumerTelemetry)
	}, "consumers did not settle")
	require.Len(t, e.es.AllDocs(), len(all), "indexed more than once")
	e.requireIndexed(all...)
	require.Zero(t, e.deadLetters())
}

func TestDeadLettersRefusedDocuments(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		newEvent func() *event.Event
		durable  string
		subject  string
	}{
		{"threat", func() *event.Event { return threat("r") }, ConsumerThreats, "whalewatch.deadletter.indexer-threats"},
		{"telemetry", func() *event.Event { return telemetry(event.TelemetryProcess) }, ConsumerTelemetry, "whalewatch.deadletter.indexer-telemetry"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			events := []*event.Event{tt.newEvent(), tt.newEvent(), tt.newEvent()}
			e.publish(events...)
			e.es.RejectNext(1, http.StatusBadRequest, "mapper_parsing_exception")
			e.start()

			natstest.Eventually(t, wait, func() bool { return e.deadLetters() == 1 && len(e.es.AllDocs()) == 2 },
				"want one dead letter and two documents")
			e.requireIndexed(events[1:]...)

			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			stream, err := e.js.Stream(ctx, bus.StreamDeadLetter)
			require.NoError(t, err)
			dl, err := stream.GetLastMsgForSubject(ctx, subject.DeadLetter(tt.durable))
			require.NoError(t, err)
			require.Equal(t, tt.subject, dl.Subject)
			require.Equal(t, marshal(t, events[0]), string(dl.Data))
			require.Equal(t, bus.ReasonPermanent, dl.Header.Get(bus.HeaderReason))
			require.Contains(t, dl.Header.Get(bus.HeaderError), "mapper_parsing_exception")
		})
	}
}

func TestThreatsOnlyWhenTelemetryIsOff(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start("-index-telemetry=false")
	th := threat("r")
	e.publish(telemetry(event.TelemetryProcess), th)
	natstest.Eventually(t, wait, func() bool { return len(e.es.AllDocs()) == 1 }, "threat not indexed")
	e.requireIndexed(th)
	require.Nil(t, e.consumer(bus.StreamTelemetry, ConsumerTelemetry))
}
