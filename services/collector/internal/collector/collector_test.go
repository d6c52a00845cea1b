package collector

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/flagenv"
	"github.com/whalewatch/whalewatch/services/collector/internal/sensor"
	"github.com/whalewatch/whalewatch/services/collector/internal/source/dockerevents"
)

// fakeDocker is an engine whose event stream the test drives: every Events
// call hands the test a subscription.
type fakeDocker struct {
	subs chan fakeSub

	mu      sync.Mutex
	lists   int
	running []container.Summary
	inspect map[string]container.InspectResponse
}

type fakeSub struct {
	opts events.ListOptions
	msgs chan events.Message
	errs chan error
}

func (f *fakeDocker) Ping(context.Context) (types.Ping, error) { return types.Ping{}, nil }

func (f *fakeDocker) Events(ctx context.Context, opts events.ListOptions) (<-chan events.Message, <-chan error) {
	s := fakeSub{opts: opts, msgs: make(chan events.Message), errs: make(chan error, 1)}
	select {
	case f.subs <- s:
	case <-ctx.Done():
	}
	return s.msgs, s.errs
}

func (f *fakeDocker) ContainerList(context.Context, container.ListOptions) ([]container.Summary, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lists++
	return f.running, nil
}

func (f *fakeDocker) ContainerInspect(_ context.Context, id string) (container.InspectResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	in, ok := f.inspect[id]
	if !ok {
		return in, errors.New("no such container")
	}
	return in, nil
}

func (f *fakeDocker) ContainerTop(context.Context, string, []string) (container.TopResponse, error) {
	return container.TopResponse{}, nil
}

func (f *fakeDocker) ExecInspect(context.Context, string) (dockerevents.ExecDetails, error) {
	return dockerevents.ExecDetails{}, errors.New("gone")
}

func testConfig(t *testing.T) Config {
	t.Helper()
	var cfg Config
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	require.NoError(t, fs.Parse(nil))
	cfg.HostName = "h"
	cfg.Admin.ShutdownTimeout = 5 * time.Second
	// The telemetry sources are off: fakes have no /proc of their own, and
	// on the real engine every test's collector would sample every
	// container. monitor_integration_test.go turns them on.
	cfg.Resources.Interval, cfg.Files.Interval, cfg.Sockets.Interval, cfg.Exposure.Interval, cfg.Logs.Enabled = 0, 0, 0, 0, false
	return cfg
}

// loadInspect reads a recorded inspect answer of the source package.
func loadInspect(t testing.TB, name string) container.InspectResponse {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "source", "testdata", name))
	require.NoError(t, err)
	var in container.InspectResponse
	require.NoError(t, json.Unmarshal(b, &in))
	return in
}

// noCaps is a host where neither the kernel sensor nor the process
// connector works.
func noCaps() capabilities {
	return capabilities{
		openSensor: func(sensor.Config, string, sensor.Containers, *slog.Logger, prometheus.Registerer) (kernelSensor, error) {
			return nil, fmt.Errorf("test: %w", sensor.ErrUnsupported)
		},
		procConnector: func() error { return errors.New("test: operation not permitted") },
	}
}

func TestReconnectResumesFromLastEventAndResyncs(t *testing.T) {
	t.Parallel()
	dflt := loadInspect(t, "inspect-default.json")
	id := dflt.ID
	f := &fakeDocker{subs: make(chan fakeSub), inspect: map[string]container.InspectResponse{id: dflt}}
	pub := &fakePublisher{}
	cfg := testConfig(t)
	cfg.ProcessPollInterval = time.Hour
	reg := prometheus.NewRegistry()
	c, err := build(f, pub, cfg, noCaps(), slog.New(slog.NewTextHandler(io.Discard, nil)), reg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- c.Run(ctx) }()

	s1 := <-f.subs
	require.Empty(t, s1.opts.Since, "no replay at the first subscription")
	t1 := time.Now().Add(time.Minute).Truncate(time.Second).Add(123456789)
	start := events.Message{Type: events.ContainerEventType, Action: "start", TimeNano: t1.UnixNano(),
		Actor: events.Actor{ID: id, Attributes: map[string]string{"name": "ww-record-default"}}}
	s1.msgs <- start
	f.mu.Lock()
	f.running = []container.Summary{{ID: id}}
	f.mu.Unlock()
	s1.errs <- io.ErrUnexpectedEOF

	s2 := <-f.subs
	require.Equal(t, strconv.FormatInt(t1.Unix(), 10)+".123456789", s2.opts.Since, "reconnects from the last event read")
	top := events.Message{Type: events.ContainerEventType, Action: "top", TimeNano: t1.UnixNano() + 1, Actor: start.Actor}
	s2.msgs <- top // read only after the resync
	f.mu.Lock()
	require.Equal(t, 2, f.lists, "re-lists the running containers after reconnecting")
	f.mu.Unlock()
	require.Equal(t, 1.0, testutil.ToFloat64(c.m.watched), "still running: still watched")
	s2.msgs <- events.Message{Type: events.ContainerEventType, Action: "die", TimeNano: t1.UnixNano() + 2, Actor: start.Actor}
	s2.msgs <- top // returns once die was handled
	require.Equal(t, 0.0, testutil.ToFloat64(c.m.watched))
	require.Equal(t, 1.0, testutil.ToFloat64(c.m.reconnects))

	cancel()
	require.NoError(t, <-done)
	pub.mu.Lock()
	defer pub.mu.Unlock()
	require.Equal(t, []string{
		"whalewatch.telemetry.h." + id + ".lifecycle", // start
		"whalewatch.telemetry.h." + id + ".config",
		"whalewatch.telemetry.h." + id + ".lifecycle", // die; top is ignored
	}, pub.subjects)
	require.Equal(t, 1.0, testutil.ToFloat64(c.m.processMode.WithLabelValues(ModeDockerTop)))
}

func TestConfigFromEnvironment(t *testing.T) {
	t.Parallel()
	var cfg Config
	fs := flag.NewFlagSet("collector", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	env := map[string]string{
		"DOCKER_HOST":           "unix:///run/docker.sock",
		"HOST_NAME":             "node-7",
		"PROCESS_POLL_INTERVAL": "250ms",
		"QUEUE_SIZE":            "500",
	}
	require.NoError(t, flagenv.Parse(fs, []string{"-queue-size", "42"}, func(k string) string { return env[k] }))
	require.NoError(t, cfg.Validate())
	require.Equal(t, "unix:///run/docker.sock", cfg.DockerHost)
	require.Equal(t, "node-7", cfg.HostName)
	require.Equal(t, 250*time.Millisecond, cfg.ProcessPollInterval)
	require.Equal(t, 42, cfg.QueueSize, "a flag wins over the environment")
	require.Equal(t, "127.0.0.1:9101", cfg.Admin.Addr)
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{"defaults", func(*Config) {}, ""},
		{"zero queue", func(c *Config) { c.QueueSize = 0 }, "queue-size must be positive"},
		{"tiny interval", func(c *Config) { c.ProcessPollInterval = time.Millisecond }, "process-poll-interval must be at least 10ms"},
		{"bad log level", func(c *Config) { c.Log.Level = "loud" }, "log-level"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig(t)
			tt.mutate(&cfg)
			err := cfg.Validate()
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
}

// The README's table is generated from the flags; this keeps it current.
// Regenerate with: go test ./internal/collector -run TestREADMEEnvTable -update
var update = flag.Bool("update", false, "rewrite the README's environment table")

func TestREADMEEnvTable(t *testing.T) {
	var cfg Config
	fs := flag.NewFlagSet("collector", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	var table bytes.Buffer
	require.NoError(t, flagenv.WriteMarkdown(&table, fs))

	const path = "../../README.md"
	const begin, end = "<!-- env-table:begin -->\n", "<!-- env-table:end -->"
	readme, err := os.ReadFile(path)
	require.NoError(t, err)
	i, j := strings.Index(string(readme), begin), strings.Index(string(readme), end)
	require.True(t, i >= 0 && j > i, "README.md lacks the env-table markers")
	if *update {
		out := string(readme[:i+len(begin)]) + table.String() + string(readme[j:])
		require.NoError(t, os.WriteFile(path, []byte(out), 0o644))
		return
	}
	require.Equal(t, table.String(), string(readme[i+len(begin):j]), "README.md env table is stale: run with -update")
}
