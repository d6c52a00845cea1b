package collector

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/client"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/subject"
	"github.com/whalewatch/whalewatch/testkit/dockertest"
	"github.com/whalewatch/whalewatch/testkit/natstest"
)

// These tests run the collector against the real Docker engine and an
// in-process JetStream server, and read back what the stream stored. Every
// collector sees every container on the engine, so each test looks only at
// its own containers, under a host name of its own.

const waitFor = 20 * time.Second

type stored struct {
	subject string
	e       *event.Event
}

type harness struct {
	host string
	c    *Collector
	reg  *prometheus.Registry

	mu      sync.Mutex
	got     []stored
	invalid []error
}

func startCollector(t *testing.T, opts ...func(*Config)) *harness {
	t.Helper()
	dockertest.BusyboxImage(t) // skips without an engine
	dc, err := NewDockerClient("")
	require.NoError(t, err)
	t.Cleanup(func() { _ = dc.Close() })
	return startCollectorWith(t, dc, opts...)
}

// startCollectorWith runs a collector on dc against an in-process JetStream
// server and records what it stores, until the test ends.
func startCollectorWith(t *testing.T, dc *client.Client, opts ...func(*Config)) *harness {
	t.Helper()
	s := natstest.Server(t)
	_, js := natstest.Connect(t, s)

	cfg := testConfig(t)
	cfg.HostName = "it-" + event.NewID()[:8]
	cfg.ProcessPollInterval = 200 * time.Millisecond
	cfg.ProcessSource = ModeDockerTop // these tests cover the poller; procconn_integration_test.go the connector
	for _, o := range opts {
		o(&cfg)
	}
	require.NoError(t, bus.EnsureStreams(t.Context(), js, cfg.NATS.Streams))

	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
	reg := prometheus.NewRegistry()
	c, err := New(dc, js, cfg, log, reg)
	require.NoError(t, err)
	h := &harness{host: cfg.HostName, c: c, reg: reg}

	cons, err := js.OrderedConsumer(t.Context(), bus.StreamTelemetry, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subject.TelemetryPrefix + "." + h.host + ".>"},
	})
	require.NoError(t, err)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		e, err := event.Decode(m.Data())
		h.mu.Lock()
		defer h.mu.Unlock()
		if err != nil {
			h.invalid = append(h.invalid, err)
			return
		}
		h.got = append(h.got, stored{m.Subject(), e})
	})
	require.NoError(t, err)
	t.Cleanup(cc.Stop)

	runUntilCleanup(t, "collector", c.Run)
	t.Cleanup(func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		require.Empty(t, h.invalid, "every stored document decodes and validates")
	})
	select {
	case <-c.synced:
	case <-time.After(waitFor):
		t.Fatal("collector did not list the running containers")
	}
	return h
}

// runUntilCleanup runs run in the background until the test ends, then
// cancels it and requires that it returns nil within waitFor.
func runUntilCleanup(t *testing.T, what string, run func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(waitFor):
			t.Errorf("%s did not stop", what)
		}
	})
}

// wait returns the first stored event matching ok, failing the test after waitFor.
func (h *harness) wait(t *testing.T, what string, ok func(*event.Event) bool) stored {
	t.Helper()
	var found stored
	natstest.Eventually(t, waitFor, func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, s := range h.got {
			if ok(s.e) {
				found = s
				return true
			}
		}
		return false
	}, "no %s stored", what)
	return found
}

func of(id string, kind event.Telemetry) func(*event.Event) bool {
	return func(e *event.Event) bool {
		return e.Container != nil && e.Container.ID == id && e.Whalewatch.Telemetry == kind
	}
}

func and(fs ...func(*event.Event) bool) func(*event.Event) bool {
	return func(e *event.Event) bool {
		for _, f := range fs {
			if !f(e) {
				return false
			}
		}
		return true
	}
}

func action(a string) func(*event.Event) bool {
	return func(e *event.Event) bool { return e.Event.Action == a }
}

func procName(n string) func(*event.Event) bool {
	return func(e *event.Event) bool { return e.Process != nil && e.Process.Name == n }
}

func TestIntegrationContainerStartedAfterCollector(t *testing.T) {
	t.Parallel()
	h := startCollector(t)
	id := dockertest.Run(t, []string{"--label", "app=web"}, "sleep", "300")
	name := strings.TrimPrefix(dockertest.Docker(t, "inspect", "-f", "{{.Name}}", id), "/")

	start := h.wait(t, "lifecycle start", and(of(id, event.TelemetryLifecycle), action("start")))
	require.Equal(t, subject.Telemetry(h.host, id, event.TelemetryLifecycle), start.subject)
	require.Len(t, start.e.Container.ID, 64)
	require.Equal(t, name, start.e.Container.Name)
	require.Equal(t, event.Image{Name: "whalewatch-test/busybox", Tag: []string{"1"}}, start.e.Container.Image)
	require.Equal(t, "web", start.e.Container.Labels["app"])
	require.Equal(t, []string{"process"}, start.e.Event.Category)
	require.Equal(t, []string{"start"}, start.e.Event.Type)
	require.Equal(t, h.host, start.e.Host.Name)

	cfg := h.wait(t, "config", of(id, event.TelemetryConfig))
	require.Equal(t, subject.Telemetry(h.host, id, event.TelemetryConfig), cfg.subject)
	c := cfg.e.Whalewatch.Config
	require.NotNil(t, c)
	require.Equal(t, "none", c.NetworkMode)
	require.False(t, c.Privileged)
	require.Equal(t, []string{"sleep", "300"}, c.Cmd)
	require.True(t, strings.HasPrefix(c.ImageID, "sha256:"), c.ImageID)

	proc := h.wait(t, "process sleep", and(of(id, event.TelemetryProcess), procName("sleep")))
	require.Equal(t, subject.Telemetry(h.host, id, event.TelemetryProcess), proc.subject)
	p := proc.e.Process
	require.Equal(t, "sleep 300", p.CommandLine)
	require.Equal(t, []string{"sleep", "300"}, p.Args)
	require.Positive(t, p.PID)
	require.NotNil(t, p.Parent)
	require.Positive(t, p.Parent.PID)
	require.Equal(t, &event.User{ID: "0"}, p.User)
	require.Equal(t, ModeDockerTop, proc.e.Whalewatch.Source)
	require.Equal(t, name, proc.e.Container.Name)

	dockertest.Remove(id)
	h.wait(t, "lifecycle die", and(of(id, event.TelemetryLifecycle), action("die")))
	h.wait(t, "lifecycle destroy", and(of(id, event.TelemetryLifecycle), action("destroy")))
}

func TestIntegrationExecNetcat(t *testing.T) {
	t.Parallel()
	h := startCollector(t)
	id := dockertest.Run(t, nil, "sleep", "300")
	h.wait(t, "process sleep", and(of(id, event.TelemetryProcess), procName("sleep")))

	dockertest.Docker(t, "exec", "-d", id, "nc", "-l", "-p", "4444")
	exec := h.wait(t, "lifecycle exec_start", and(of(id, event.TelemetryLifecycle), action("exec_start")))
	p := exec.e.Process
	require.NotNil(t, p)
	require.Equal(t, "nc", p.Name)
	require.Equal(t, "nc -l -p 4444", p.CommandLine)
	require.Equal(t, []string{"nc", "-l", "-p", "4444"}, p.Args)
	require.Equal(t, &event.User{ID: "0", Name: "root"}, p.User)
	require.Equal(t, []string{"process"}, exec.e.Event.Category)

	proc := h.wait(t, "process nc", and(of(id, event.TelemetryProcess), procName("nc")))
	require.Equal(t, "nc -l -p 4444", proc.e.Process.CommandLine)
	require.Equal(t, []string{"start"}, proc.e.Event.Type, "appeared after the first poll")
	require.Equal(t, &event.User{ID: "0"}, proc.e.Process.User)

	// The exec's own user, from the engine's exec record.
	dockertest.Docker(t, "exec", "-d", "-u", "1000:1000", id, "nc", "-l", "-p", "4445")
	byUID := func(e *event.Event) bool { return e.Process != nil && strings.HasSuffix(e.Process.CommandLine, "4445") }
	exec = h.wait(t, "lifecycle exec_start as 1000", and(of(id, event.TelemetryLifecycle), action("exec_start"), byUID))
	require.Equal(t, &event.User{ID: "1000"}, exec.e.Process.User)
	proc = h.wait(t, "process nc as 1000", and(of(id, event.TelemetryProcess), byUID))
	require.Equal(t, &event.User{ID: "1000"}, proc.e.Process.User)
}

func TestIntegrationContainerRunningBeforeCollector(t *testing.T) {
	t.Parallel()
	id := dockertest.Run(t, nil, "sleep", "301")
	h := startCollector(t)

	cfg := h.wait(t, "config", of(id, event.TelemetryConfig))
	require.Equal(t, []string{"sleep", "301"}, cfg.e.Whalewatch.Config.Cmd)
	proc := h.wait(t, "process sleep", and(of(id, event.TelemetryProcess), procName("sleep")))
	require.Equal(t, "sleep 301", proc.e.Process.CommandLine)
	require.Equal(t, []string{"info"}, proc.e.Event.Type, "already there at the first poll")
}

func TestIntegrationHostileInputArrivesBounded(t *testing.T) {
	t.Parallel()
	h := startCollector(t)
	var labels []string
	for i := range event.MaxLabels + 6 {
		labels = append(labels, "--label", fmt.Sprintf("k%03d=v", i))
	}
	labels = append(labels, "--label", "k000="+strings.Repeat("L", 3*event.MaxLabelValue))
	id := dockertest.Run(t, labels, "sleep", "300")

	cfg := h.wait(t, "config", of(id, event.TelemetryConfig))
	require.Len(t, cfg.e.Container.Labels, event.MaxLabels)
	require.True(t, strings.HasSuffix(cfg.e.Container.Labels["k000"], event.Ellipsis))
	require.LessOrEqual(t, len(cfg.e.Container.Labels["k000"]), event.MaxLabelValue)

	const nArgs = 100
	args := []string{"exec", "-d", id, "sh", "-c", "sleep 1000; true"}
	for range nArgs {
		args = append(args, strings.Repeat("A", 200)+"\n\t\"'$(x)<b>\xff")
	}
	dockertest.Docker(t, args...)

	hostile := func(e *event.Event) bool {
		return e.Process != nil && e.Process.Name == "sh" && strings.Contains(e.Process.CommandLine, "AAAA")
	}
	exec := h.wait(t, "lifecycle exec_start", and(of(id, event.TelemetryLifecycle), action("exec_start"), hostile))
	p := exec.e.Process
	require.LessOrEqual(t, len(p.CommandLine), event.MaxCommandLine)
	require.True(t, strings.HasSuffix(p.CommandLine, event.Ellipsis))
	require.Len(t, p.Args, event.MaxArgs)
	require.Equal(t, 3+nArgs, p.ArgsCount, "exact argv from the exec record")
	require.LessOrEqual(t, len(exec.e.Message), event.MaxMessage)

	proc := h.wait(t, "process sh", and(of(id, event.TelemetryProcess), hostile))
	p = proc.e.Process
	require.LessOrEqual(t, len(p.CommandLine), event.MaxCommandLine)
	require.True(t, strings.HasSuffix(p.CommandLine, event.Ellipsis))
	require.Len(t, p.Args, event.MaxArgs)
	require.Greater(t, p.ArgsCount, event.MaxArgs)
}

// A container that is only created (privileged ones cannot start on some
// hosts, and an attacker may never start it) is judged from inspect at create.
func TestIntegrationConfigAtCreate(t *testing.T) {
	t.Parallel()
	h := startCollector(t)
	id := dockertest.Create(t, []string{"--privileged", "--cap-add", "SYS_ADMIN", "-v", "/etc:/host-etc:ro", "--device", "/dev/null:/dev/xnull:r"}, "sleep", "300")

	h.wait(t, "lifecycle create", and(of(id, event.TelemetryLifecycle), action("create")))
	cfg := h.wait(t, "config at create", of(id, event.TelemetryConfig))
	c := cfg.e.Whalewatch.Config
	require.True(t, c.Privileged)
	// Engines differ in whether they report the CAP_ prefix.
	require.Condition(t, func() bool {
		return slices.ContainsFunc(c.CapAdd, func(s string) bool { return strings.TrimPrefix(s, "CAP_") == "SYS_ADMIN" })
	}, "cap_add %v", c.CapAdd)
	var etc *event.Mount
	for i := range c.Mounts {
		if c.Mounts[i].Destination == "/host-etc" {
			etc = &c.Mounts[i]
		}
	}
	require.NotNil(t, etc, "mounts %+v", c.Mounts)
	require.Equal(t, "/etc", etc.Source)
	require.True(t, etc.ReadOnly)
	require.Equal(t, []event.Device{{PathOnHost: "/dev/null", PathInContainer: "/dev/xnull", Permissions: "r"}}, c.Devices)
}
