package indexer

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/admin"
	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/flagenv"
	"github.com/whalewatch/whalewatch/pkg/response"
	"github.com/whalewatch/whalewatch/pkg/subject"
	"github.com/whalewatch/whalewatch/testkit/natstest"
)

// childEnv holds the indexer flags of a child process, separated by \x1f.
const childEnv = "WHALEWATCH_INDEXER_CHILD"

// TestMain lets a test run the indexer in a child process it can kill -9:
// the test binary started with childEnv set is that child.
func TestMain(m *testing.M) {
	if args := os.Getenv(childEnv); args != "" {
		os.Exit(runChild(strings.Split(args, "\x1f")))
	}
	os.Exit(m.Run())
}

func runChild(args []string) int {
	var cfg Config
	fs := flag.NewFlagSet("indexer", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	if err := flagenv.Parse(fs, args, func(string) string { return "" }); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := Run(ctx, cfg, cfg.Log.NewLogger(os.Stderr, "indexer"), admin.NewRegistry()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// Killed mid-stream (kill -9: nothing drained, acks in flight lost), with
// acknowledgements lost on the way back (the stub stored, the client resent),
// 429 items, and Elasticsearch down when the indexer comes back: every event
// is stored exactly once, nothing is dead-lettered.
func TestNothingLostNorDuplicatedThroughFaults(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const n = 4000
	events := make([]*event.Event, n)
	for i := range events {
		if i%10 == 0 {
			events[i] = threat("r")
		} else {
			events[i] = telemetry(event.Telemetries[i%len(event.Telemetries)])
		}
	}
	e.publish(events...)
	e.es.RejectNext(60, http.StatusTooManyRequests, "es_rejected_execution_exception")
	e.es.LoseNextResponses(3)

	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), childEnv+"="+strings.Join([]string{
		"-nats-url", e.nats.ClientURL(), "-elasticsearch-url", e.es.URL, "-http-addr", "",
		"-batch-size", "50", "-workers", "2", "-flush-interval", "20ms", "-retry-max-backoff", "1s", "-log-level", "error",
		"-elasticsearch-timeout", "2s", "-ack-wait", "6s",
	}, "\x1f"))
	child.Stderr = t.Output()
	require.NoError(t, child.Start())
	natstest.Eventually(t, wait, func() bool { return e.es.DocCount() >= n/5 }, "the child indexed nothing")
	require.NoError(t, child.Process.Kill())
	_ = child.Wait()
	killedAt := e.es.DocCount()
	t.Logf("killed after %d of %d documents", killedAt, n)

	e.es.SetDown(true)
	e.start("-elasticsearch-timeout", "2s", "-ack-wait", "6s")
	natstest.Eventually(t, wait, func() bool { s, _ := e.ready(); return s == http.StatusServiceUnavailable }, "ready while Elasticsearch is down")
	e.es.SetDown(false)
	natstest.Eventually(t, wait, func() bool {
		return e.es.DocCount() == n && e.settled(bus.StreamThreats, ConsumerThreats) && e.settled(bus.StreamTelemetry, ConsumerTelemetry)
	}, "not everything indexed after the restart")
	require.Len(t, e.es.AllDocs(), n, "a document stored twice")
	e.requireIndexed(events...)
	require.Zero(t, e.deadLetters())
}

func TestIndexesResponseActions(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start()
	th := threat("suspicious-tool-netcat")
	req, err := response.NewRequest(response.Request{
		Host: "docker-host-1", ContainerID: strings.Repeat("ab", 32), Action: response.Pause,
		Reason: "Netcat listener", Trigger: th.Event.ID, Container: th.Container,
	})
	require.NoError(t, err)
	res := response.NewResult(req, response.StatusDone, "paused", nil, time.Now())
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	for _, m := range []struct {
		subj string
		e    *event.Event
	}{
		{subject.ActionRequest(req.Host.Name, req.Container.ID), req},
		{subject.ActionResult(res.Host.Name, res.Container.ID), res},
	} {
		require.NoError(t, e.pub.Publish(ctx, m.subj, m.e))
	}
	natstest.Eventually(t, wait, func() bool { return len(e.es.Docs("logs-whalewatch.response-default")) == 2 }, "response actions not indexed")
	e.requireIndexed(req, res)

	// Published again after the duplicate window: stored once, acked.
	again := nats.NewMsg(subject.ActionResult(res.Host.Name, res.Container.ID))
	again.Data = []byte(marshal(t, res))
	_, err = e.js.PublishMsg(ctx, again, jetstream.WithMsgID("another-id"))
	require.NoError(t, err)
	natstest.Eventually(t, wait, func() bool { return e.settled(bus.StreamActions, ConsumerResponse) }, "the duplicate was not acked")
	require.Len(t, e.es.Docs("logs-whalewatch.response-default"), 2)
	require.Zero(t, e.deadLetters())
}

// A write block (and the like) is the operator's to fix: documents wait,
// readiness says why, nothing is dead-lettered; once lifted, all are stored.
func TestOperationsErrorsWaitForTheOperator(t *testing.T) {
	t.Parallel()
	tests := []struct {
		status  int
		errType string
	}{
		{http.StatusForbidden, "cluster_block_exception"},
		{http.StatusForbidden, "security_exception"},
		{http.StatusNotFound, "index_not_found_exception"},
	}
	for _, tt := range tests {
		t.Run(tt.errType, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			reg := prometheus.NewRegistry()
			e.es.SetItemError(tt.status, tt.errType)
			e.startWith(reg)
			events := []*event.Event{threat("a"), telemetry(event.TelemetryProcess), telemetry(event.TelemetryLog)}
			e.publish(events...)
			natstest.Eventually(t, wait, func() bool {
				s, body := e.ready()
				return s == http.StatusServiceUnavailable && strings.Contains(body, tt.errType)
			}, "readiness should report the refusal")
			natstest.Eventually(t, wait, func() bool {
				return e.consumer(bus.StreamThreats, ConsumerThreats).NumRedelivered > 0
			}, "not retried")
			require.Zero(t, e.deadLetters())
			require.Empty(t, e.es.AllDocs())
			require.Positive(t, counterSum(t, reg, "whalewatch_indexer_operations_errors_total"))

			e.es.SetItemError(0, "")
			natstest.Eventually(t, wait, func() bool { return e.es.DocCount() == len(events) }, "not indexed once lifted")
			e.requireIndexed(events...)
			natstest.Eventually(t, wait, func() bool { s, _ := e.ready(); return s == http.StatusOK }, "readiness did not recover")
			require.Zero(t, e.deadLetters())
		})
	}
}

// Poison (not JSON, not an event, unknown kind) is dead-lettered as invalid,
// alone, before Elasticsearch sees it.
func TestDeadLettersPoison(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start()
	good := telemetry(event.TelemetryProcess)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	poison := []string{`not json`, `{"event":{"id":"x","kind":"event"}}`, `[1,2]`, strings.Replace(marshal(t, good), `"kind":"event"`, `"kind":"weird"`, 1)}
	for i, p := range poison {
		m := nats.NewMsg(subject.ForTelemetry(good))
		m.Data = []byte(p)
		_, err := e.js.PublishMsg(ctx, m, jetstream.WithMsgID(fmt.Sprint("poison-", i)))
		require.NoError(t, err)
	}
	e.publish(good)
	natstest.Eventually(t, wait, func() bool { return e.deadLetters() == uint64(len(poison)) && e.es.DocCount() == 1 }, "want the poison dead-lettered and the event indexed")
	e.requireIndexed(good)
	stream, err := e.js.Stream(ctx, bus.StreamDeadLetter)
	require.NoError(t, err)
	dl, err := stream.GetLastMsgForSubject(ctx, subject.DeadLetter(ConsumerTelemetry))
	require.NoError(t, err)
	require.Equal(t, bus.ReasonInvalid, dl.Header.Get(bus.HeaderReason))
}

func counterSum(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}
