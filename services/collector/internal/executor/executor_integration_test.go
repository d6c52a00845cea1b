package executor

import (
	"context"
	"flag"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/client"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/response"
	"github.com/whalewatch/whalewatch/pkg/subject"
	"github.com/whalewatch/whalewatch/testkit/dockertest"
	"github.com/whalewatch/whalewatch/testkit/natstest"
)

// These tests run the responder against the real Docker engine and an
// in-process JetStream server: requests go through the actions stream, and
// the containers' state is read back with docker inspect.

type responseHarness struct {
	host string
	js   jetstream.JetStream
	r    *Executor
	pub  *bus.EventPublisher

	mu      sync.Mutex
	results []*event.Event
}

func startResponder(t *testing.T, mode string) *responseHarness {
	t.Helper()
	dockertest.BusyboxImage(t) // skips without an engine
	s := natstest.Server(t)
	_, js := natstest.Connect(t, s)
	cfg := testConfig(t)
	host := "rt-" + event.NewID()[:8]
	cfg.Mode = mode
	cfg.StopTimeout = time.Second
	var nc bus.Config
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	nc.RegisterFlags(fs)
	require.NoError(t, fs.Parse(nil))
	require.NoError(t, bus.EnsureStreams(t.Context(), js, nc.Streams))

	dc, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	require.NoError(t, err)
	t.Cleanup(func() { _ = dc.Close() })
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
	r := New(dc, js, bus.NewEventPublisher(js, prometheus.NewRegistry()), cfg, host, nc.Streams, log, prometheus.NewRegistry())
	h := &responseHarness{host: host, js: js, r: r, pub: bus.NewEventPublisher(js, prometheus.NewRegistry())}

	cons, err := js.OrderedConsumer(t.Context(), bus.StreamActions, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subject.ActionsPrefix + ".result." + h.host + ".>"},
	})
	require.NoError(t, err)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		e, err := event.Decode(m.Data())
		if err != nil {
			t.Errorf("invalid result: %v", err)
			return
		}
		h.mu.Lock()
		h.results = append(h.results, e)
		h.mu.Unlock()
	})
	require.NoError(t, err)
	t.Cleanup(cc.Stop)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(20 * time.Second):
			t.Error("executor did not stop")
		}
	})
	return h
}

// ask publishes a request for container id and returns it.
func (h *responseHarness) ask(t *testing.T, id string, action response.Action, mut ...func(*response.Request)) *event.Event {
	t.Helper()
	req := response.Request{Host: h.host, ContainerID: id, Action: action, Reason: "integration test"}
	if action == response.LimitCPU {
		req.CPUs = 0.5
	}
	for _, m := range mut {
		m(&req)
	}
	e, err := response.NewRequest(req)
	require.NoError(t, err)
	require.NoError(t, h.pub.Publish(t.Context(), response.RequestSubject(e), e))
	return e
}

// result waits for the result of request req.
func (h *responseHarness) result(t *testing.T, req *event.Event) *event.Event {
	t.Helper()
	var res *event.Event
	natstest.Eventually(t, waitFor, func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, e := range h.results {
			if e.Whalewatch.Response.Target == req.Event.ID {
				res = e
				return true
			}
		}
		return false
	}, "no result for %s %s", req.Event.Action, req.Event.ID)
	return res
}

func inspectField(t *testing.T, id, format string) string {
	t.Helper()
	return dockertest.Docker(t, "inspect", "-f", format, id)
}

func TestIntegrationResponseDryRunByDefault(t *testing.T) {
	t.Parallel()
	h := startResponder(t, ModeDryRun)
	id := dockertest.Run(t, nil, "sleep", "300")
	res := h.result(t, h.ask(t, id, response.Pause))
	require.Equal(t, string(response.StatusDryRun), res.Whalewatch.Response.Status)
	require.Equal(t, "dry run: would pause the container", res.Whalewatch.Response.Reason)
	require.Equal(t, subject.ActionResult(h.host, id), response.ResultSubject(res))
	require.Equal(t, "true false", inspectField(t, id, "{{.State.Running}} {{.State.Paused}}"), "still running")
}

func TestIntegrationResponsePauseActsOnce(t *testing.T) {
	t.Parallel()
	h := startResponder(t, ModeEnforce)
	id := dockertest.Run(t, nil, "sleep", "300")
	req := h.ask(t, id, response.Pause)
	res := h.result(t, req)
	require.Equal(t, string(response.StatusDone), res.Whalewatch.Response.Status, res.Whalewatch.Response.Reason)
	require.Equal(t, "success", res.Event.Outcome)
	require.Equal(t, "true", inspectField(t, id, "{{.State.Paused}}"))

	// An operator lets it go; then the same request arrives again (as after a
	// lost ack: re-published under another message id, so the stream keeps it).
	dockertest.Docker(t, "unpause", id)
	data, err := event.Marshal(req)
	require.NoError(t, err)
	msg := nats.NewMsg(response.RequestSubject(req))
	msg.Data = data
	_, err = h.js.PublishMsg(t.Context(), msg, jetstream.WithMsgID(event.NewID()))
	require.NoError(t, err)

	natstest.Eventually(t, waitFor, func() bool { return testutil.ToFloat64(h.r.m.replays) == 1 }, "redelivered request not recognised")
	cons, err := h.js.Consumer(t.Context(), bus.StreamActions, h.r.Durable())
	require.NoError(t, err)
	natstest.Eventually(t, waitFor, func() bool {
		info, err := cons.Info(t.Context())
		return err == nil && info.AckFloor.Consumer == 2
	}, "second delivery not acked")
	require.Equal(t, "false", inspectField(t, id, "{{.State.Paused}}"), "acted once: not paused again")
	stream, err := h.js.Stream(t.Context(), bus.StreamActions)
	require.NoError(t, err)
	info, err := stream.Info(t.Context(), jetstream.WithSubjectFilter(subject.ActionResult(h.host, id)))
	require.NoError(t, err)
	require.Equal(t, map[string]uint64{subject.ActionResult(h.host, id): 1}, info.State.Subjects, "the re-published result is stored once")
	require.Equal(t, 1.0, testutil.ToFloat64(h.r.m.results.WithLabelValues(string(response.Pause), string(response.StatusDone))))
}

func TestIntegrationResponseRefusals(t *testing.T) {
	t.Parallel()
	h := startResponder(t, ModeEnforce)
	protected := dockertest.Run(t, []string{"--label", "whalewatch.protected=true"}, "sleep", "300")
	own := dockertest.Run(t, []string{"--label", ComponentLabel + "=true"}, "sleep", "300")
	tests := []struct {
		id, reason string
	}{
		{protected, "protected by label whalewatch.protected"},
		{own, "whalewatch's own container"},
		{strings.Repeat("0", 64), "no such container"},
	}
	for _, tt := range tests {
		res := h.result(t, h.ask(t, tt.id, response.Kill))
		require.Equal(t, string(response.StatusRefused), res.Whalewatch.Response.Status)
		require.Contains(t, res.Whalewatch.Response.Reason, tt.reason)
		require.Equal(t, "failure", res.Event.Outcome)
	}
	require.Equal(t, "true", inspectField(t, protected, "{{.State.Running}}"))
	require.Equal(t, "true", inspectField(t, own, "{{.State.Running}}"))
}

func TestIntegrationResponseActions(t *testing.T) {
	t.Parallel()
	h := startResponder(t, ModeEnforce)

	// An internal network: the container has an interface to lose, and no
	// route out of the host.
	net := "ww-resp-" + event.NewID()[:8]
	dockertest.Docker(t, "network", "create", "--internal", "--label", dockertest.LabelTest+"="+t.Name(), net)
	t.Cleanup(func() { _, _ = dockertest.Try("network", "rm", net) }) // after the container (cleanups run last-in first-out)

	tests := []struct {
		action             response.Action
		args, format, want string
	}{
		{response.Kill, "", "{{.State.Running}}", "false"},
		{response.Stop, "", "{{.State.Running}}", "false"},
		{response.Disconnect, net, "{{len .NetworkSettings.Networks}} {{.State.Running}}", "0 true"},
		{response.LimitCPU, "", "{{.HostConfig.NanoCpus}}", "500000000"},
		{response.Pause, "", "{{.State.Paused}}", "true"},
	}
	var wg sync.WaitGroup
	ids := make([]string, len(tests))
	for i, tt := range tests {
		var args []string
		if tt.args != "" {
			args = []string{"--network", tt.args}
		}
		ids[i] = dockertest.Run(t, args, "sleep", "300")
	}
	for i, tt := range tests {
		wg.Go(func() {
			res := h.result(t, h.ask(t, ids[i], tt.action))
			require.Equal(t, string(response.StatusDone), res.Whalewatch.Response.Status, "%s: %s", tt.action, res.Whalewatch.Response.Reason)
		})
	}
	wg.Wait()
	for i, tt := range tests {
		require.Equal(t, tt.want, inspectField(t, ids[i], tt.format), tt.action)
	}
}

const waitFor = 20 * time.Second
