package collector

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/docker/docker/client"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/poll"
	"github.com/whalewatch/whalewatch/pkg/service"
	"github.com/whalewatch/whalewatch/services/collector/internal/sensor"
	"github.com/whalewatch/whalewatch/services/collector/internal/source"
	"github.com/whalewatch/whalewatch/services/collector/internal/source/diff"
	"github.com/whalewatch/whalewatch/services/collector/internal/source/dockerevents"
	"github.com/whalewatch/whalewatch/services/collector/internal/source/dockertop"
	"github.com/whalewatch/whalewatch/services/collector/internal/source/exposure"
	"github.com/whalewatch/whalewatch/services/collector/internal/source/fanotify"
	"github.com/whalewatch/whalewatch/services/collector/internal/source/logs"
	"github.com/whalewatch/whalewatch/services/collector/internal/source/procconn"
	"github.com/whalewatch/whalewatch/services/collector/internal/source/resources"
	"github.com/whalewatch/whalewatch/services/collector/internal/source/sockets"
)

// This file is the one place where the collector's sources are chosen: from
// the configuration and from what the kernel allows, once, at start. Nothing
// is swapped afterwards.
//
// The fallback chain (-process-source auto):
//
//	ebpf            the kernel sensor: processes, files and connections as
//	                they happen. docker top and docker diff run once per
//	                container that predates it, docker diff again when the
//	                sensor lost records (and every -diff-reconcile-interval
//	                when set); the socket tables are not polled; logs are
//	                read from files.
//	proc-connector  the netlink process connector: every exec. docker top
//	                once per container that predates it; files by docker
//	                diff, sockets by /proc polling.
//	docker-top      docker top polled per container; docker diff; /proc.
//
// Each link can be forced (-process-source ebpf|proc-connector|docker-top):
// the collector then fails at start when it does not work here. The choice
// is logged and exported as whalewatch_collector_source_mode.

// kernelSensor is what the collector asks of the kernel sensor
// (*sensor.Sensor).
type kernelSensor interface {
	Run(ctx context.Context, emit func(*event.Event)) error
	Mode() string
	// Lost counts the records the kernel could not hand over (ring full).
	Lost() uint64
	Close() error
}

// capabilities are the probes of what this host allows; tests give their own.
type capabilities struct {
	// openSensor loads the kernel sensor; an error wrapping
	// sensor.ErrUnsupported means this kernel or these privileges cannot.
	openSensor func(cfg sensor.Config, host string, containers sensor.Containers, log *slog.Logger, reg prometheus.Registerer) (kernelSensor, error)
	// procConnector tells whether the process connector works here.
	procConnector func() error
	// newProcConnector builds the process connector source.
	newProcConnector func(host string, lookup source.Containers, log *slog.Logger, reg prometheus.Registerer) procSource
	// fanotify opens the file source beside the process connector; nil: none.
	fanotify func(layout fanotify.Layout, host string, log *slog.Logger, reg prometheus.Registerer) (fileWatcher, error)
}

// fileWatcher is the fanotify source: a host source reading the group and a
// per-container source registering each container's directory.
type fileWatcher interface {
	source.Host
	source.PerContainer
	Close() error
}

// procSource is the process connector as the wiring uses it.
type procSource interface {
	source.Host
	Listening() time.Time
}

// hostCapabilities are the real probes.
func hostCapabilities() capabilities {
	return capabilities{
		openSensor: func(cfg sensor.Config, host string, containers sensor.Containers, log *slog.Logger, reg prometheus.Registerer) (kernelSensor, error) {
			s, err := sensor.Open(cfg, host, containers, log, reg)
			if err != nil {
				return nil, err
			}
			return s, nil
		},
		procConnector: procconn.Probe,
		newProcConnector: func(host string, lookup source.Containers, log *slog.Logger, reg prometheus.Registerer) procSource {
			return procconn.New(host, lookup, log, reg)
		},
		fanotify: func(layout fanotify.Layout, host string, log *slog.Logger, reg prometheus.Registerer) (fileWatcher, error) {
			w, err := fanotify.New(layout, host, log, reg)
			if err != nil {
				return nil, err
			}
			return w, nil
		},
	}
}

// modes are what the wiring chose, by kind of telemetry.
type modes struct {
	process, file, network, logs string
}

// New returns a collector that reads the engine through docker and publishes
// on js, with the sources that cfg asks for and this host allows. It
// registers its metrics on reg.
func New(docker *client.Client, js bus.Publisher, cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Collector, error) {
	host, err := cfg.hostName()
	if err != nil {
		return nil, err
	}
	// Events leave complete (ECS), so that the indexer stores them as they are.
	agent := event.Agent{Type: "whalewatch-collector", Name: host, Version: service.ReadBuildInfo().Version}
	return build(newDockerAPI(docker), bus.NewEventPublisher(js, reg, bus.CompleteAs(agent)), cfg, hostCapabilities(), log, reg)
}

// The Docker API calls of the resource, log and file sources and of the
// exposure check. They are separate from dockerAPI so that an engine (or a
// test fake) without them simply runs without those sources.
type (
	statsAPI = resources.API
	logsAPI  = logs.API
	diffAPI  = diff.API
	infoAPI  = exposure.InfoAPI
)

func build(docker dockerAPI, pub eventPublisher, cfg Config, caps capabilities, log *slog.Logger, reg prometheus.Registerer) (*Collector, error) {
	host, err := cfg.hostName()
	if err != nil {
		return nil, err
	}
	c := &Collector{
		modes:    modes{file: "off", network: "off", logs: "off"},
		cfg:      cfg,
		host:     host,
		docker:   docker,
		log:      log,
		now:      time.Now,
		cache:    map[string]*source.Container{},
		watchers: map[string]context.CancelFunc{},
		synced:   make(chan struct{}),
	}
	c.m = newMetrics(reg, func() float64 { return float64(len(c.queue.ch)) })
	c.queue = newQueue(cfg.QueueSize, pub, c.m, log)
	c.events = dockerevents.NewStream(docker, log, c.m.dockerErrors.WithLabelValues("events"), c.m.reconnects)

	// Processes: the first link of the chain that works.
	mode := cfg.ProcessSource
	var ks kernelSensor
	if mode == ModeAuto || mode == ModeEBPF {
		ks, err = caps.openSensor(cfg.Sensor, host, cache{c}, log, reg)
		switch {
		case err == nil:
			mode = ModeEBPF
			c.closers = append(c.closers, ks.Close)
		case cfg.ProcessSource == ModeEBPF:
			return nil, fmt.Errorf("process-source ebpf: %w", err)
		case errors.Is(err, sensor.ErrUnsupported):
			log.Info("kernel sensor unsupported here, falling back", "err", err)
		default:
			log.Warn("kernel sensor failed to load, falling back", "err", err)
		}
	}
	if mode == ModeAuto || mode == ModeProcConnector {
		err := caps.procConnector()
		switch {
		case err == nil:
			mode = ModeProcConnector
		case cfg.ProcessSource == ModeProcConnector:
			return nil, fmt.Errorf("process-source proc-connector: %w", err)
		default:
			log.Warn("process connector unavailable, polling docker top (needs root, and the host's PID and network namespaces)", "err", err)
		}
	}
	if mode == ModeAuto {
		mode = ModeDockerTop
	}
	c.modes.process = mode

	topErrs := c.m.dockerErrors.WithLabelValues("top")
	lost := &poll.Signal{} // the sensor lost records: docker diff reconciles at once
	var besideFiles diff.Beside
	switch mode {
	case ModeEBPF:
		started := &atomic.Int64{}
		c.hostSources = append(c.hostSources, sensorSource{ks, started}, lossWatch{ks, lost, log, lossCheck})
		besideFiles = diff.Beside{Since: func() time.Time { return unixNano(started.Load()) }, Wake: lost.C}
		c.perContainer = append(c.perContainer, inventory{
			since: func() time.Time { return unixNano(started.Load()) },
			top:   dockertop.New(docker, host, cfg.ProcessPollInterval, true, log, topErrs),
		})
	case ModeProcConnector:
		pc := caps.newProcConnector(host, cache{c}, log, reg)
		c.hostSources = append(c.hostSources, pc)
		if fw := c.openFanotify(docker, caps, reg); fw != nil {
			c.hostSources = append(c.hostSources, fw)
			c.perContainer = append(c.perContainer, fw)
			c.closers = append(c.closers, fw.Close)
			c.modes.file = fanotify.Mode
		}
		c.perContainer = append(c.perContainer, inventory{
			since: pc.Listening,
			top:   dockertop.New(docker, host, cfg.ProcessPollInterval, true, log, topErrs),
		})
	default:
		c.perContainer = append(c.perContainer, dockertop.New(docker, host, cfg.ProcessPollInterval, false, log, topErrs))
	}

	// Resources, logs, files, sockets.
	if s, ok := docker.(statsAPI); ok && cfg.Resources.Interval > 0 {
		c.perContainer = append(c.perContainer, resources.New(s, cfg.Resources, cfg.Mounts, host, log, c.m.dockerErrors.WithLabelValues("stats"), reg))
	}
	if l, ok := docker.(logsAPI); ok && cfg.Logs.Enabled {
		lm := logs.New(l, cfg.Logs, host, log, c.m.dockerErrors.WithLabelValues("logs"), reg)
		c.perContainer = append(c.perContainer, lm)
		c.closers = append(c.closers, lm.Close)
		c.modes.logs = cfg.Logs.Source
	}
	diffEvery := cfg.Files.Interval
	if mode == ModeEBPF {
		c.modes.file = ModeEBPF
	}
	switch c.modes.file {
	case "off":
	case fanotify.Mode:
		// fanotify misses a container's first moments: a periodic look.
		diffEvery = cmp.Or(cfg.Files.ReconcileInterval, diff.FanotifyReconcile)
	default:
		// The sensor: a look at containers older than it and after lost
		// records, periodic only when asked. A docker diff costs the engine
		// tens of milliseconds of CPU on vfs: every 5 min for 200 idle
		// containers was 3 % of a core.
		diffEvery = cfg.Files.ReconcileInterval
	}
	if d, ok := docker.(diffAPI); ok && cfg.Files.Interval > 0 {
		c.perContainer = append(c.perContainer, diff.New(d, diffEvery, besideFiles, cfg.Files, cfg.Mounts, host, log, c.m.dockerErrors.WithLabelValues("diff"), reg))
		if c.modes.file == "off" {
			c.modes.file = "docker-diff"
		}
	}
	switch {
	case mode == ModeEBPF:
		c.modes.network = ModeEBPF // every connect, accept and state change: no polling
	case cfg.Sockets.Interval > 0:
		c.perContainer = append(c.perContainer, sockets.New(cfg.Sockets, cfg.Mounts, host, log, reg))
		c.modes.network = "proc-net"
	}
	if cfg.Exposure.Interval > 0 {
		var info infoAPI
		if i, ok := docker.(infoAPI); ok {
			info = i
		}
		c.hostSources = append(c.hostSources, exposure.New(cfg.Exposure, cfg.DockerHost, host, info, log))
	}

	c.m.processMode.WithLabelValues(mode).Set(1)
	for kind, m := range map[string]string{"process": c.modes.process, "file": c.modes.file, "network": c.modes.network, "log": c.modes.logs} {
		c.m.sourceMode.WithLabelValues(kind, m).Set(1)
	}
	log.Info("sources chosen", "process", c.modes.process, "file", c.modes.file, "network", c.modes.network,
		"log", c.modes.logs, "process_source_flag", cfg.ProcessSource)
	return c, nil
}

// sensorSource runs the kernel sensor as a host source and remembers since
// when it reads.
type sensorSource struct {
	s       kernelSensor
	started *atomic.Int64 // unix ns
}

func (s sensorSource) Run(ctx context.Context, emit source.Emit) error {
	s.started.Store(time.Now().UnixNano())
	return s.s.Run(ctx, emit)
}

// lossWatch fires lost when the kernel sensor's count of lost records
// grows, at most once per lossCheck: every container's docker diff then
// reconciles the file changes the lost records carried.
type lossWatch struct {
	s     kernelSensor
	lost  *poll.Signal
	log   *slog.Logger
	every time.Duration // lossCheck
}

const lossCheck = 10 * time.Second

func (w lossWatch) Run(ctx context.Context, _ source.Emit) error {
	seen := w.s.Lost()
	return poll.Loop{What: "sensor loss check", Interval: w.every}.Run(ctx, func(context.Context) error {
		if n := w.s.Lost(); n > seen {
			w.log.Warn("kernel sensor lost records (ring buffer full): reconciling file changes with docker diff",
				"lost", n-seen, "lost_total", n)
			seen = n
			w.lost.Fire()
		}
		return nil
	})
}

func unixNano(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// inventory is the per-container process source beside an event-driven one
// (the kernel sensor, the process connector): one docker top of a container
// that was running before that source began to listen, whose earlier
// processes it could not have seen start. A container started later is not
// polled at all.
type inventory struct {
	since func() time.Time // zero: not listening yet
	top   *dockertop.Poller
}

// inventoryMargin covers the clock skew between the engine's StartedAt and
// the collector's clock, and the exec of the entrypoint just before it.
const inventoryMargin = 2 * time.Second

func (t inventory) Monitor(ctx context.Context, ctr *source.Container, emit source.Emit) error {
	since := t.since()
	if !since.IsZero() && ctr.StartedAt.After(since.Add(inventoryMargin)) {
		return nil
	}
	return t.top.Monitor(ctx, ctr, emit)
}

// openFanotify opens the fanotify file source on the filesystem of the
// engine's data root, when -fanotify asks for it, the engine says where its
// data is, and the kernel allows; nil otherwise (docker diff then reports
// files).
func (c *Collector) openFanotify(docker dockerAPI, caps capabilities, reg prometheus.Registerer) fileWatcher {
	if !c.cfg.Fanotify || caps.fanotify == nil {
		return nil
	}
	info, ok := docker.(infoAPI)
	if !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), source.CallTimeout)
	defer cancel()
	in, err := info.Info(ctx)
	if err != nil || in.DockerRootDir == "" || in.Driver == "" {
		c.log.Warn("fanotify file source off: the engine's data root is unknown", "err", err)
		return nil
	}
	fw, err := caps.fanotify(fanotify.Layout{DataRoot: in.DockerRootDir, Driver: in.Driver}, c.host, c.log, reg)
	if err != nil {
		c.log.Warn("fanotify file source unavailable, files from docker diff", "err", err)
		return nil
	}
	return fw
}
