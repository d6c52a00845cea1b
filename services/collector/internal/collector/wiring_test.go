package collector

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/system"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/poll"
	"github.com/whalewatch/whalewatch/services/collector/internal/sensor"
	"github.com/whalewatch/whalewatch/services/collector/internal/source"
	"github.com/whalewatch/whalewatch/services/collector/internal/source/diff"
	"github.com/whalewatch/whalewatch/services/collector/internal/source/dockertop"
	"github.com/whalewatch/whalewatch/services/collector/internal/source/fanotify"
	"github.com/whalewatch/whalewatch/services/collector/internal/source/sockets"
)

// fakeSensor is a kernel sensor that loads.
type fakeSensor struct {
	closed bool
	lost   atomic.Uint64
}

func (f *fakeSensor) Run(ctx context.Context, _ func(*event.Event)) error { <-ctx.Done(); return nil }
func (f *fakeSensor) Mode() string                                        { return ModeEBPF }
func (f *fakeSensor) Lost() uint64                                        { return f.lost.Load() }
func (f *fakeSensor) Close() error                                        { f.closed = true; return nil }

// fakeProc is a process connector that listens.
type fakeProc struct{}

func (fakeProc) Run(ctx context.Context, _ source.Emit) error { <-ctx.Done(); return nil }
func (fakeProc) Listening() time.Time                         { return time.Now() }

// caps is a host where the sensor and the connector work as told (the
// real sensor package is not asked: as root with BTF it would load).
func caps(sensorOK, connectorOK bool, fs *fakeSensor) capabilities {
	c := capabilities{
		openSensor: func(sensor.Config, string, sensor.Containers, *slog.Logger, prometheus.Registerer) (kernelSensor, error) {
			if sensorOK {
				return fs, nil
			}
			return nil, fmt.Errorf("opening the kernel sensor: no BTF: %w", sensor.ErrUnsupported)
		},
		procConnector: func() error {
			if connectorOK {
				return nil
			}
			return errors.New("operation not permitted")
		},
		newProcConnector: func(string, source.Containers, *slog.Logger, prometheus.Registerer) procSource { return fakeProc{} },
	}
	return c
}

// withDiffAndSockets is a fake engine that answers docker diff.
type withDiff struct{ *fakeDocker }

func (withDiff) ContainerDiff(context.Context, string) ([]container.FilesystemChange, error) {
	return nil, nil
}

func TestFallbackChain(t *testing.T) {
	t.Parallel()
	tests := []struct {
		flag                  string
		sensorOK, connectorOK bool
		want                  string // process mode; "" = start fails
		wantErr               string
	}{
		{flag: ModeAuto, sensorOK: true, connectorOK: true, want: ModeEBPF},
		{flag: ModeAuto, sensorOK: false, connectorOK: true, want: ModeProcConnector}, // what the stub gives as root
		{flag: ModeAuto, sensorOK: false, connectorOK: false, want: ModeDockerTop},
		{flag: ModeEBPF, sensorOK: true, want: ModeEBPF},
		{flag: ModeEBPF, sensorOK: false, connectorOK: true, wantErr: "kernel sensor unsupported"},
		{flag: ModeProcConnector, sensorOK: true, connectorOK: true, want: ModeProcConnector},
		{flag: ModeProcConnector, connectorOK: false, wantErr: "process-source proc-connector: operation not permitted"},
		{flag: ModeDockerTop, sensorOK: true, connectorOK: true, want: ModeDockerTop},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s sensor=%v connector=%v", tt.flag, tt.sensorOK, tt.connectorOK), func(t *testing.T) {
			t.Parallel()
			cfg := testConfig(t)
			cfg.ProcessSource = tt.flag
			cfg.Files.Interval, cfg.Files.ReconcileInterval = 30*time.Second, 5*time.Minute
			cfg.Sockets.Interval = 10 * time.Second
			reg := prometheus.NewRegistry()
			fs := &fakeSensor{}
			c, err := build(withDiff{&fakeDocker{}}, &fakePublisher{}, cfg, caps(tt.sensorOK, tt.connectorOK, fs), slog.New(slog.NewTextHandler(io.Discard, nil)), reg)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, c.modes.process)
			require.Equal(t, 1.0, testutil.ToFloat64(c.m.processMode.WithLabelValues(tt.want)))
			require.Equal(t, 1.0, testutil.ToFloat64(c.m.sourceMode.WithLabelValues("process", tt.want)))
			n, err := testutil.GatherAndCount(reg, "whalewatch_collector_process_mode")
			require.NoError(t, err)
			require.Equal(t, 1, n, "one mode only")

			var tops, polls, sockPolls int
			var diffs []*diff.Monitor
			for _, s := range c.perContainer {
				switch s := s.(type) {
				case *dockertop.Poller:
					polls++
				case inventory:
					tops++
				case *diff.Monitor:
					diffs = append(diffs, s)
				case *sockets.Monitor:
					sockPolls++
				}
			}
			switch tt.want {
			case ModeEBPF:
				require.Equal(t, []int{1, 0, 0}, []int{tops, polls, sockPolls}, "an inventory only; no socket polling")
				require.Len(t, c.hostSources, 2, "the sensor and its loss check")
				require.Equal(t, "ebpf", c.modes.file)
				require.Equal(t, "ebpf", c.modes.network)
				require.Len(t, diffs, 1, "docker diff reconciles")
				require.Equal(t, 5*time.Minute, diffs[0].Interval(), "periodic only when asked")
				require.NoError(t, c.Close())
				require.True(t, fs.closed, "Close releases the sensor")
			case ModeProcConnector:
				require.Equal(t, []int{1, 0, 1}, []int{tops, polls, sockPolls})
				require.Len(t, c.hostSources, 1)
				require.Equal(t, "docker-diff", c.modes.file)
			case ModeDockerTop:
				require.Equal(t, []int{0, 1, 1}, []int{tops, polls, sockPolls})
				require.Empty(t, c.hostSources)
			}
		})
	}
}

// Beside the sensor docker diff has no period by default (a first look
// and looks after lost records), and -diff-interval 0 turns it off.
func TestDiffBesideTheSensor(t *testing.T) {
	t.Parallel()
	for _, every := range []time.Duration{30 * time.Second, 0} {
		cfg := testConfig(t)
		cfg.Files.Interval, cfg.Files.ReconcileInterval = every, 0
		c, err := build(withDiff{&fakeDocker{}}, &fakePublisher{}, cfg, caps(true, true, &fakeSensor{}), slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
		require.NoError(t, err)
		var diffs []*diff.Monitor
		for _, s := range c.perContainer {
			if d, ok := s.(*diff.Monitor); ok {
				diffs = append(diffs, d)
			}
		}
		if every == 0 {
			require.Empty(t, diffs, "-diff-interval 0: no docker diff at all")
		} else {
			require.Len(t, diffs, 1)
			require.Zero(t, diffs[0].Interval(), "no periodic look beside the sensor")
		}
		require.Equal(t, "ebpf", c.modes.file)
	}
}

// The loss check fires the reconciliation when the sensor's count of lost
// records grows, and not before.
func TestLossWatchFiresOnLostRecords(t *testing.T) {
	t.Parallel()
	fs := &fakeSensor{}
	fs.lost.Store(3) // lost before the check started: not this run's
	var lost poll.Signal
	woken := lost.C()
	w := lossWatch{s: fs, lost: &lost, log: slog.New(slog.NewTextHandler(io.Discard, nil)), every: 10 * time.Millisecond}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- w.Run(ctx, nil) }()
	select {
	case <-woken:
		t.Fatal("fired without new losses")
	case <-time.After(100 * time.Millisecond):
	}
	fs.lost.Add(5)
	select {
	case <-woken:
	case <-time.After(10 * time.Second):
		t.Fatal("no reconciliation after lost records")
	}
	cancel()
	require.NoError(t, <-done)
}

func TestInventoryOnlyForContainersOlderThanTheSource(t *testing.T) {
	t.Parallel()
	listening := time.Now()
	inv := inventory{since: func() time.Time { return listening }, top: dockertop.New(nil, "h", time.Hour, true, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)}
	young := &source.Container{ID: "c", StartedAt: listening.Add(time.Minute)}
	require.NoError(t, inv.Monitor(t.Context(), young, func(*event.Event) { t.Fatal("no inventory of a container the source saw start") }))
}

func TestConfigProcessSource(t *testing.T) {
	t.Parallel()
	for mode, ok := range map[string]bool{ModeAuto: true, ModeEBPF: true, ModeProcConnector: true, ModeDockerTop: true, "": false, "kprobe": false} {
		cfg := testConfig(t)
		cfg.ProcessSource = mode
		if ok {
			require.NoError(t, cfg.Validate(), mode)
		} else {
			require.ErrorContains(t, cfg.Validate(), "process-source must be auto, ebpf, proc-connector or docker-top", mode)
		}
	}
}

func TestSourceConfigsValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{"defaults", func(*Config) {}, ""},
		{"all disabled", func(c *Config) {
			c.Resources.Interval, c.Files.Interval, c.Sockets.Interval, c.Exposure.Interval, c.Logs.Enabled = 0, 0, 0, 0, false
			c.Logs.BatchLines = 0
		}, ""},
		{"tiny interval", func(c *Config) { c.Sockets.Interval = time.Millisecond }, "socket-interval must be 0 (disabled) or at least 100ms"},
		{"batch too large", func(c *Config) { c.Logs.Enabled, c.Logs.BatchLines = true, 257 }, "log-batch-lines must be between 1 and 256"},
		{"no rate", func(c *Config) { c.Logs.Enabled, c.Logs.MaxLinesPerSecond = true, 0 }, "log-max-lines-per-second must be positive"},
		{"bad log source", func(c *Config) { c.Logs.Enabled, c.Logs.Source = true, "syslog" }, `log-source must be auto, file or engine-api, not "syslog"`},
		{"no diff budget", func(c *Config) { c.Files.MaxChanges = 0 }, "diff-max-changes must be positive"},
		{"bad port", func(c *Config) { c.Exposure.ProbePorts = "2375,http" }, `exposure-probe-ports: "http" is not a port`},
		{"port out of range", func(c *Config) { c.Exposure.ProbePorts = "70000" }, "is not a port"},
		{"sensor ring", func(c *Config) { c.Sensor.RingBufferBytes = 1000 }, "sensor-ring-buffer-bytes"},
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

func TestMonitorLabel(t *testing.T) {
	t.Parallel()
	for label, want := range map[string]bool{"": true, "app": true, "app=web": true, "app=db": false, "tier": false} {
		cfg := Config{MonitorLabel: label}
		require.Equal(t, want, cfg.monitored(map[string]string{"app": "web"}), label)
	}
}

// fakeFiles is a fanotify source that opens.
type fakeFiles struct{}

func (fakeFiles) Run(ctx context.Context, _ source.Emit) error { <-ctx.Done(); return nil }
func (fakeFiles) Monitor(ctx context.Context, _ *source.Container, _ source.Emit) error {
	<-ctx.Done()
	return nil
}
func (fakeFiles) Close() error { return nil }

// withInfo is a fake engine that says where its data is.
type withInfo struct{ withDiff }

func (withInfo) Info(context.Context) (system.Info, error) {
	return system.Info{Driver: "vfs", DockerRootDir: "/var/lib/docker"}, nil
}

func TestFanotifyBesideTheConnector(t *testing.T) {
	t.Parallel()
	for _, on := range []bool{true, false} {
		cfg := testConfig(t)
		cfg.ProcessSource, cfg.Fanotify = ModeProcConnector, on
		cfg.Files.Interval, cfg.Files.ReconcileInterval = 30*time.Second, 5*time.Minute
		cp := caps(false, true, nil)
		var layout fanotify.Layout
		cp.fanotify = func(l fanotify.Layout, _ string, _ *slog.Logger, _ prometheus.Registerer) (fileWatcher, error) {
			layout = l
			return fakeFiles{}, nil
		}
		c, err := build(withInfo{withDiff{&fakeDocker{}}}, &fakePublisher{}, cfg, cp, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
		require.NoError(t, err)
		var every []time.Duration
		for _, s := range c.perContainer {
			if d, ok := s.(*diff.Monitor); ok {
				every = append(every, d.Interval())
			}
		}
		if on {
			require.Equal(t, "fanotify", c.modes.file)
			require.Equal(t, fanotify.Layout{DataRoot: "/var/lib/docker", Driver: "vfs"}, layout)
			require.Len(t, c.hostSources, 2)
			require.Equal(t, []time.Duration{5 * time.Minute}, every, "docker diff only reconciles")
		} else {
			require.Equal(t, "docker-diff", c.modes.file)
			require.Equal(t, []time.Duration{30 * time.Second}, every)
		}
	}
}

// The real probe: as root on a kernel with BTF the sensor loads, so auto
// picks ebpf; elsewhere it fails with ErrUnsupported and auto degrades to the
// next link of the chain.
func TestSensorProbe(t *testing.T) {
	var cfg sensor.Config
	cfg.RegisterFlags(flag.NewFlagSet("sensor", flag.ContinueOnError))
	require.NoError(t, cfg.Validate())
	ks, err := hostCapabilities().openSensor(cfg, "h", cache{}, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	_, btfErr := os.Stat("/sys/kernel/btf/vmlinux")
	if os.Geteuid() == 0 && btfErr == nil {
		require.NoError(t, err, "root with BTF: the kernel sensor must load here")
		require.NoError(t, ks.Close())
		return
	}
	require.ErrorIs(t, err, sensor.ErrUnsupported)
}
