package detector

import (
	"context"
	"fmt"
	"io"
	"log/slog"
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

// TestIncidentChainOnNATS: a drop, its exec, a scan and a second container's
// threat, through NATS. The chain's threats share one incident whose count
// grows; the scan's hundred probes are one threat; each threat carries the
// container's evidence and the process's ancestry.
func TestIncidentChainOnNATS(t *testing.T) {
	t.Parallel()
	s := natstest.Server(t)
	_, js := natstest.Connect(t, s)
	cfg := testConfig(t)
	cfg.State.BaselineLearning = 0
	ctx, cancel := context.WithCancel(context.Background())
	require.NoError(t, bus.EnsureStreams(ctx, js, cfg.NATS.Streams))
	threats := make(chan *event.Event, 100)
	sub, err := js.OrderedConsumer(ctx, bus.StreamThreats, jetstream.OrderedConsumerConfig{})
	require.NoError(t, err)
	cc, err := sub.Consume(func(m jetstream.Msg) {
		e, err := event.Decode(m.Data())
		require.NoError(t, err)
		threats <- e
	})
	require.NoError(t, err)
	t.Cleanup(cc.Stop)
	reg := prometheus.NewRegistry()
	d := New(js, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), reg)
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})

	at := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	base := func(cid string, kind event.Telemetry) *event.Event {
		at = at.Add(time.Second)
		return &event.Event{
			Timestamp:  at,
			Event:      event.Meta{ID: event.NewID(), Kind: event.KindEvent, Type: []string{"start"}},
			Host:       event.Host{Name: "h"},
			Container:  &event.Container{ID: cid, Name: cid, Image: event.Image{Name: "app", Tag: []string{"1"}}},
			Whalewatch: event.Whalewatch{SchemaVersion: event.SchemaVersion, Telemetry: kind},
		}
	}
	execOf := func(cid string, pid, ppid int, args ...string) *event.Event {
		e := base(cid, event.TelemetryProcess)
		e.Process = &event.Process{PID: pid, Name: args[0], Executable: args[0], Args: args, CommandLine: fmt.Sprint(args),
			Parent: &event.Parent{PID: ppid}, Hash: &event.Hash{SHA256: "ab12"}}
		return e
	}
	var in []*event.Event
	in = append(in, execOf("c1", 1, 0, "/bin/sh", "/entrypoint.sh"), execOf("c1", 2, 1, "/usr/bin/app"))
	logs := base("c1", event.TelemetryLog)
	logs.Whalewatch.Log = &event.LogBatch{Stream: "stdout", Lines: []string{"GET /upload 200"}}
	in = append(in, logs)
	drop := base("c1", event.TelemetryFile)
	drop.File = &event.File{Path: "/tmp/x", Type: "file"}
	drop.Whalewatch.FileChange = &event.FileChange{Operation: "create", Executable: true}
	in = append(in, drop, execOf("c1", 3, 2, "/tmp/x", "-q"))
	for port := 1; port <= 100; port++ {
		c := base("c1", event.TelemetryNetwork)
		c.Event.Outcome = "failure"
		c.Process = &event.Process{PID: 3}
		c.Destination = &event.Endpoint{IP: "127.0.0.1", Port: port}
		c.Network = &event.Network{Transport: "tcp", Direction: "egress"}
		c.Whalewatch.Socket = &event.Socket{State: "connect"}
		in = append(in, c)
	}
	in = append(in, execOf("c2", 9, 1, "/tmp/y"))
	pub := bus.NewEventPublisher(js, prometheus.NewRegistry())
	for _, e := range in {
		require.NoError(t, pub.Publish(ctx, subject.ForTelemetry(e), e))
	}

	// Stream order per container: once c2's threat is out, c1's all are.
	byRule := map[string]*event.Event{}
	natstest.Eventually(t, 15*time.Second, func() bool {
		for {
			select {
			case th := <-threats:
				require.Nil(t, byRule[th.Rule.ID+th.Container.ID], "%s published twice", th.Rule.ID)
				byRule[th.Rule.ID+th.Container.ID] = th
			default:
				return byRule["exec-from-temp-dirc2"] != nil
			}
		}
	}, "no threat for c2")
	want := []string{"executable-dropped-in-temp-dir", "dropped-binary-executed", "exec-from-temp-dir", "port-scan-connection-fanout"}
	var incident string
	count := 0
	for _, rule := range want {
		th := byRule[rule+"c1"]
		require.NotNil(t, th, rule)
		inc := th.Whalewatch.Incident
		require.NotNil(t, inc, rule)
		if incident == "" {
			incident = inc.ID
		}
		require.Equal(t, incident, inc.ID, "%s: one incident for the chain", rule)
		require.Greater(t, inc.Count, count, rule)
		count = inc.Count
		require.NotNil(t, th.Whalewatch.Evidence, rule)
		require.Contains(t, th.Whalewatch.Evidence.LogLines, "GET /upload 200", rule)
		require.Contains(t, th.Whalewatch.Evidence.FileChanges, "create /tmp/x", rule)
	}
	require.Len(t, byRule, len(want)+1, "threats: %v", keys(byRule))
	exec := byRule["dropped-binary-executed"+"c1"]
	require.Equal(t, []event.Ancestor{
		{PID: 2, Name: "/usr/bin/app", Executable: "/usr/bin/app", CommandLine: "[/usr/bin/app]"},
		{PID: 1, Name: "/bin/sh", Executable: "/bin/sh", CommandLine: "[/bin/sh /entrypoint.sh]"},
	}, exec.Whalewatch.Ancestry)
	require.Equal(t, "ab12", exec.Process.Hash.SHA256)
	scan := byRule["port-scan-connection-fanout"+"c1"]
	require.Equal(t, []string{"executable-dropped-in-temp-dir", "dropped-binary-executed", "exec-from-temp-dir", "port-scan-connection-fanout"}, scan.Whalewatch.Incident.Rules)
	require.Contains(t, scan.Whalewatch.Evidence.Connections, "connect 127.0.0.1:15 tcp (refused)")
	require.NotEqual(t, incident, byRule["exec-from-temp-dirc2"].Whalewatch.Incident.ID, "another container, another incident")

	// The probes after the 15th were folded, and counted.
	natstest.Eventually(t, 5*time.Second, func() bool {
		return counterValue(t, reg, "whalewatch_detector_threats_folded_total", "port-scan-connection-fanout") == 85
	}, "folded scan probes")
}

func keys(m map[string]*event.Event) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func counterValue(tb testing.TB, reg *prometheus.Registry, name, rule string) float64 {
	tb.Helper()
	mfs, err := reg.Gather()
	require.NoError(tb, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "rule" && l.GetValue() == rule {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
