package detector

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/subject"
	"github.com/whalewatch/whalewatch/services/detector/internal/rules"
	"github.com/whalewatch/whalewatch/testkit/natstest"
)

func testConfig(tb testing.TB) Config {
	tb.Helper()
	var c Config
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.RegisterFlags(fs)
	require.NoError(tb, fs.Parse(nil))
	require.NoError(tb, c.Validate())
	return c
}

// netcatRule is the shipped rule for netcat.
func netcatRule(tb testing.TB) *rules.Rule {
	tb.Helper()
	s, err := rules.LoadConfig(rules.Config{})
	require.NoError(tb, err)
	r := s.Rule("suspicious-tool-netcat")
	require.NotNil(tb, r)
	return r
}

func processEvent(host, cid string, args ...string) *event.Event {
	return &event.Event{
		Timestamp: time.Now().UTC(),
		Event:     event.Meta{ID: event.NewID(), Kind: event.KindEvent, Category: []string{"process"}, Type: []string{"start"}},
		Host:      event.Host{Name: host},
		Container: &event.Container{ID: cid, Name: "web", Image: event.Image{Name: "busybox", Tag: []string{"1"}}},
		Process:   &event.Process{PID: 42, Name: args[0], Args: args, CommandLine: strings.Join(args, " ")},
		Whalewatch: event.Whalewatch{
			SchemaVersion: event.SchemaVersion, Telemetry: event.TelemetryProcess, Source: "docker-top",
		},
	}
}

func TestThreatDocument(t *testing.T) {
	t.Parallel()
	e := processEvent("h1", "c1", "nc", "-l", "-p", "4444")
	now := time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)
	th := Threat(e, rules.Match{Rule: netcatRule(t), Message: "nc executed"}, now)
	require.NoError(t, th.Validate())
	require.Equal(t, event.KindAlert, th.Event.Kind)
	require.Equal(t, 73, th.Event.Severity)
	require.Equal(t, event.SeverityHigh, th.Whalewatch.Severity)
	require.Equal(t, e.Event.ID, th.Whalewatch.Trigger)
	require.Equal(t, []string{"T1095"}, th.Threat.Technique.ID)
	require.Equal(t, event.FrameworkMITRE, th.Threat.Framework)
	require.Equal(t, "nc executed in container web (image busybox) on host h1: nc -l -p 4444", th.Message)
	require.Equal(t, "whalewatch.threats.high.suspicious-tool-netcat", subject.ForThreat(th))
	// The same trigger always yields the same threat id, another trigger another.
	require.Equal(t, th.Event.ID, Threat(e, rules.Match{Rule: netcatRule(t)}, now.Add(time.Hour)).Event.ID)
	require.NotEqual(t, th.Event.ID, Threat(processEvent("h1", "c1", "nc"), rules.Match{Rule: netcatRule(t)}, now).Event.ID)
}

// TestDetectorEndToEndOnNATS runs the detector against an in-process NATS
// server: malicious process telemetry yields one threat, benign yields none.
func TestDetectorEndToEndOnNATS(t *testing.T) {
	t.Parallel()
	s := natstest.Server(t)
	_, js := natstest.Connect(t, s)
	cfg := testConfig(t)
	ctx, cancel := context.WithCancel(context.Background())
	require.NoError(t, bus.EnsureStreams(ctx, js, cfg.NATS.Streams))

	threats := make(chan *event.Event, 10)
	sub, err := js.OrderedConsumer(ctx, bus.StreamThreats, jetstream.OrderedConsumerConfig{})
	require.NoError(t, err)
	cc, err := sub.Consume(func(m jetstream.Msg) {
		e, err := event.Decode(m.Data())
		require.NoError(t, err)
		threats <- e
	})
	require.NoError(t, err)
	t.Cleanup(cc.Stop)

	d := New(js, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})

	pub := bus.NewEventPublisher(js, prometheus.NewRegistry())
	benign := processEvent("h1", "c-benign", "sleep", "3600")
	bad := processEvent("h1", "c-bad", "nc", "-l", "-p", "4444")
	for _, e := range []*event.Event{benign, bad, bad} { // bad twice: a retried publish
		require.NoError(t, pub.Publish(ctx, subject.ForTelemetry(e), e))
	}
	// The detector handles telemetry in order, so once the threat for bad is
	// out, benign was evaluated and raised nothing.
	select {
	case th := <-threats:
		require.Equal(t, "suspicious-tool-netcat", th.Rule.ID)
		require.Equal(t, "c-bad", th.Container.ID)
	case <-time.After(10 * time.Second):
		t.Fatal("no threat published")
	}
	consumer, err := js.Consumer(ctx, bus.StreamTelemetry, cfg.Durable)
	require.NoError(t, err)
	natstest.Eventually(t, 5*time.Second, func() bool {
		info, err := consumer.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	}, "telemetry not all acked")
	st, err := js.Stream(ctx, bus.StreamThreats)
	require.NoError(t, err)
	info, err := st.Info(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, info.State.Msgs, "one threat for one exec")
	require.Empty(t, threats)
}
