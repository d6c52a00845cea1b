package detector

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/services/detector/internal/state"
	"github.com/whalewatch/whalewatch/testkit/natstest"
)

// TestHandleThreatsWithoutProcessOrContainer: configuration and host-scoped
// telemetry raise threats that have no process (and no container); they are
// published, carry the rule's tags, and are deduplicated like the others.
func TestHandleThreatsWithoutProcessOrContainer(t *testing.T) {
	t.Parallel()
	s := natstest.Server(t)
	_, js := natstest.Connect(t, s)
	ctx := context.Background()
	cfg := testConfig(t)
	require.NoError(t, bus.EnsureStreams(ctx, js, cfg.NATS.Streams))
	d := New(js, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())

	privileged := &event.Event{
		Timestamp:  time.Now().UTC(),
		Event:      event.Meta{ID: event.NewID(), Kind: event.KindEvent},
		Host:       event.Host{Name: "h1"},
		Container:  &event.Container{ID: "c1", Name: "web", Image: event.Image{Name: "nginx", Tag: []string{"1.27"}}},
		Whalewatch: event.Whalewatch{SchemaVersion: event.SchemaVersion, Telemetry: event.TelemetryConfig, Config: &event.ContainerConfig{Privileged: true, User: "1000", ReadonlyRootfs: true, MemoryLimit: 1, NanoCPUs: 1, PidsLimit: 1}},
	}
	api := &event.Event{
		Timestamp:  time.Now().UTC(),
		Event:      event.Meta{ID: event.NewID(), Kind: event.KindEvent},
		Host:       event.Host{Name: "h1"},
		Whalewatch: event.Whalewatch{SchemaVersion: event.SchemaVersion, Telemetry: event.TelemetryConfig, DockerAPI: &event.DockerAPI{Address: "127.0.0.1:2375", Reachable: true}},
	}
	require.NoError(t, d.Handle(ctx, privileged))
	require.NoError(t, d.Handle(ctx, api))
	again := *privileged
	again.Event.ID = event.NewID() // the same configuration seen at create and at start
	require.NoError(t, d.Handle(ctx, &again))

	st, err := js.Stream(ctx, bus.StreamThreats)
	require.NoError(t, err)
	info, err := st.Info(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 2, info.State.Msgs, "privileged once, Docker API once")
	msg, err := st.GetLastMsgForSubject(ctx, "whalewatch.threats.critical.container-privileged")
	require.NoError(t, err)
	th, err := event.Decode(msg.Data)
	require.NoError(t, err)
	require.Nil(t, th.Process)
	require.Contains(t, th.Tags, "configuration")
	require.Equal(t, "privileged container in container web (image nginx) on host h1", th.Message)
}

type fixedTracker state.Snapshot

func (f fixedTracker) Observe(*event.Event) state.Snapshot { return state.Snapshot(f) }

// TestScanIsOneThreatPerWindow: a port scan raises the fan-out rule on
// every connection; the container's incident folds the repeats into one
// threat, and the rule reads the snapshot the tracker returned for the event.
func TestScanIsOneThreatPerWindow(t *testing.T) {
	t.Parallel()
	s := natstest.Server(t)
	_, js := natstest.Connect(t, s)
	ctx := context.Background()
	cfg := testConfig(t)
	require.NoError(t, bus.EnsureStreams(ctx, js, cfg.NATS.Streams))
	d := New(js, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	d.tracker = fixedTracker{DistinctDestPorts: 40, DistinctDestHosts: 1}
	for port := 1; port <= 5; port++ {
		require.NoError(t, d.Handle(ctx, &event.Event{
			Timestamp:   time.Now().UTC(),
			Event:       event.Meta{ID: event.NewID(), Kind: event.KindEvent},
			Host:        event.Host{Name: "h1"},
			Container:   &event.Container{ID: "c1", Name: "web"},
			Network:     &event.Network{Transport: "tcp", Direction: "egress"},
			Destination: &event.Endpoint{IP: "10.0.0.5", Port: port},
			Whalewatch:  event.Whalewatch{SchemaVersion: event.SchemaVersion, Telemetry: event.TelemetryNetwork, Socket: &event.Socket{State: "syn_sent"}},
		}))
	}
	st, err := js.Stream(ctx, bus.StreamThreats)
	require.NoError(t, err)
	info, err := st.Info(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, info.State.Msgs)
	msg, err := st.GetLastMsgForSubject(ctx, "whalewatch.threats.high.port-scan-connection-fanout")
	require.NoError(t, err)
	th, err := event.Decode(msg.Data)
	require.NoError(t, err)
	require.Equal(t, 1, th.Destination.Port, "the first connection's destination")
}

// TestIncidentSurvivesRuleReload: a reload of the rule files swaps the rule
// set, not the detector's state: the next threat joins the open incident.
func TestIncidentSurvivesRuleReload(t *testing.T) {
	t.Parallel()
	s := natstest.Server(t)
	_, js := natstest.Connect(t, s)
	ctx := context.Background()
	cfg := testConfig(t)
	cfg.Rules.Dir = t.TempDir()
	require.NoError(t, bus.EnsureStreams(ctx, js, cfg.NATS.Streams))
	d := New(js, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	exec := func(args ...string) *event.Event { return processEvent("h1", "c1", args...) }

	require.NoError(t, d.Handle(ctx, exec("nc", "-l", "-p", "4444")))
	require.NoError(t, os.WriteFile(filepath.Join(cfg.Rules.Dir, "site.yaml"),
		[]byte("rules:\n  - id: suspicious-tool-downloader\n    override: true\n    severity: high\n"), 0o644))
	require.True(t, d.engine.ReloadIfChanged())
	require.NoError(t, d.Handle(ctx, exec("wget", "http://127.0.0.1/x")))

	st, err := js.Stream(ctx, bus.StreamThreats)
	require.NoError(t, err)
	get := func(subj string) *event.Event {
		msg, err := st.GetLastMsgForSubject(ctx, subj)
		require.NoError(t, err)
		th, err := event.Decode(msg.Data)
		require.NoError(t, err)
		return th
	}
	nc := get("whalewatch.threats.high.suspicious-tool-netcat")
	wget := get("whalewatch.threats.high.suspicious-tool-downloader") // high: the reloaded rule
	require.Equal(t, nc.Whalewatch.Incident.ID, wget.Whalewatch.Incident.ID)
	require.Equal(t, 2, wget.Whalewatch.Incident.Count)
	require.Equal(t, []string{"suspicious-tool-netcat", "suspicious-tool-downloader"}, wget.Whalewatch.Incident.Rules)
}
