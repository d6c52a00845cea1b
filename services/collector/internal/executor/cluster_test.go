package executor

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/response"
	"github.com/whalewatch/whalewatch/pkg/subject"
	"github.com/whalewatch/whalewatch/testkit/natscluster"
)

// forgetfulEngine is a Docker engine whose containers are always running
// and unpaused when inspected (as if an operator undid every action at
// once): a request executed twice calls ContainerPause twice, so the calls
// count executions, which the engine's own idempotence would otherwise hide.
type forgetfulEngine struct {
	mu     sync.Mutex
	pauses map[string]int
}

func (f *forgetfulEngine) ContainerInspect(_ context.Context, id string) (container.InspectResponse, error) {
	return container.InspectResponse{
		ContainerJSONBase: &container.ContainerJSONBase{
			ID: id, Name: "/victim",
			State:      &container.State{Running: true, Status: "running"},
			HostConfig: &container.HostConfig{},
		},
		Config: &container.Config{Image: "busybox:1"},
	}, nil
}

func (f *forgetfulEngine) ContainerPause(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pauses[id]++
	return nil
}

func (f *forgetfulEngine) ContainerUnpause(context.Context, string) error { return nil }
func (f *forgetfulEngine) ContainerStop(context.Context, string, container.StopOptions) error {
	return nil
}
func (f *forgetfulEngine) ContainerKill(context.Context, string, string) error { return nil }
func (f *forgetfulEngine) ContainerUpdate(context.Context, string, container.UpdateConfig) (container.UpdateResponse, error) {
	return container.UpdateResponse{}, nil
}
func (f *forgetfulEngine) NetworkDisconnect(context.Context, string, string, bool) error { return nil }

// TestClusterLeaderKill runs the executors of two hosts on a three-node
// cluster (R3 actions stream and done bucket), puts the leaders of
// WHALEWATCH_ACTIONS, both consumers and the done bucket on one node, and
// kills it while requests are published, then restarts it. Every request is
// executed exactly once and has exactly one result in the stream.
func TestClusterLeaderKill(t *testing.T) {
	t.Parallel()
	c := natscluster.New(t)
	nc, admin := c.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var bc bus.Config
	fs := flagSet()
	bc.RegisterFlags(fs)
	require.NoError(t, fs.Parse(nil))
	streams := bc.Streams
	streams.Replicas = 3
	require.NoError(t, bus.EnsureStreamsRetry(ctx, admin, streams, nil))

	cfg := testConfig(t)
	cfg.Mode = ModeEnforce
	cfg.StopTimeout = 0
	hosts := []string{"web-1", "db.example.com"}
	engines := map[string]*forgetfulEngine{}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	durables := make([]string, len(hosts))
	for i, host := range hosts {
		_, js := c.Connect(t)
		eng := &forgetfulEngine{pauses: map[string]int{}}
		engines[host] = eng
		r := New(eng, js, bus.NewEventPublisher(js, prometheus.NewRegistry()), cfg, host, streams, log, prometheus.NewRegistry())
		durables[i] = r.Durable()
		rctx, rcancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- r.Run(rctx) }()
		t.Cleanup(func() {
			rcancel()
			<-done
		})
	}
	target := c.WaitStreamLeader(bus.StreamActions, 20*time.Second)
	for _, d := range durables {
		c.WaitConsumerLeader(bus.StreamActions, d, 30*time.Second)
		c.MoveConsumerLeader(nc, bus.StreamActions, d, target)
	}
	c.WaitStreamLeader("KV_"+DoneBucket, 30*time.Second)
	c.MoveStreamLeader(nc, "KV_"+DoneBucket, target)

	const perHost, rate = 60, 20
	want := map[string]time.Time{} // result id → publish time of its request
	_, pub := c.Connect(t)
	tick := time.NewTicker(time.Second / rate)
	defer tick.Stop()
	for i := range perHost * len(hosts) {
		<-tick.C
		switch i {
		case perHost * len(hosts) / 3:
			c.Kill(target)
		case 2 * perHost * len(hosts) / 3:
			c.Restart(target)
		}
		host := hosts[i%len(hosts)]
		req, err := response.NewRequest(response.Request{
			Host: host, ContainerID: fmt.Sprintf("%064x", i+1), Action: response.Pause, Reason: "test", Trigger: "threat-1",
		})
		require.NoError(t, err)
		want[event.DeriveID("response-result", req.Event.ID)] = time.Now()
		data, err := event.Marshal(req)
		require.NoError(t, err)
		msg := nats.NewMsg(response.RequestSubject(req))
		msg.Data = data
		natscluster.PublishUntilStored(t, ctx, pub, msg, req.Event.ID) // as the detector does
	}

	// Every result stored, each once.
	var resultSubjects []string
	for _, h := range hosts {
		resultSubjects = append(resultSubjects, "whalewatch.actions.result."+subject.Token(h)+".>")
	}
	results, worst := natscluster.Stored(t, ctx, admin, bus.StreamActions, resultSubjects, len(want), 90*time.Second, want, func(res *event.Event) {
		require.Equal(t, string(response.StatusDone), res.Whalewatch.Response.Status, res.Whalewatch.Response.Reason)
	})
	twice := natscluster.Twice(results)
	executions, executedTwice := 0, 0
	for _, eng := range engines {
		eng.mu.Lock()
		for _, n := range eng.pauses {
			executions += n
			executedTwice += n - 1
		}
		eng.mu.Unlock()
	}
	t.Logf("%d requests at %d/s to %d hosts, the node leading the actions stream, the consumers and the done bucket killed and restarted: %d executions (%d repeated), %d results (%d twice); longest publish to stored result %v",
		len(want), rate, len(hosts), executions, executedTwice, len(results), twice, worst.Round(time.Millisecond))
	require.Len(t, results, len(want), "results lost")
	require.Zero(t, twice, "results stored twice")
	require.Equal(t, len(want), executions, "executions")
	require.Zero(t, executedTwice, "requests executed twice")
	// The target is under 10 s; the bound leaves room for a loaded machine.
	require.Less(t, worst, slowdown*20*time.Second, "longest stall")
}

func flagSet() *flag.FlagSet {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}
