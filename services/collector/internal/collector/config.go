package collector

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/whalewatch/whalewatch/pkg/admin"
	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/services/collector/internal/executor"
	"github.com/whalewatch/whalewatch/services/collector/internal/sensor"
	"github.com/whalewatch/whalewatch/services/collector/internal/source"
	"github.com/whalewatch/whalewatch/services/collector/internal/source/diff"
	"github.com/whalewatch/whalewatch/services/collector/internal/source/exposure"
	"github.com/whalewatch/whalewatch/services/collector/internal/source/logs"
	"github.com/whalewatch/whalewatch/services/collector/internal/source/resources"
	"github.com/whalewatch/whalewatch/services/collector/internal/source/sockets"
)

// Process source modes of -process-source: the fallback chain, or one link
// of it forced.
const (
	// ModeAuto takes the first link of the chain that works here: the
	// kernel sensor, else the process connector (plus fanotify), else
	// docker top.
	ModeAuto          = "auto"
	ModeEBPF          = source.ModeEBPF
	ModeProcConnector = source.ModeProcConnector
	ModeDockerTop     = source.ModeDockerTop
)

// Config is the collector's configuration. Each source owns its settings
// (nested configs with their own flags and validation).
type Config struct {
	NATS  bus.Config
	Admin admin.Config
	Log   admin.LogConfig
	// DockerHost is the Docker engine's address; empty keeps the Docker
	// client's own defaults (DOCKER_HOST, DOCKER_CERT_PATH, the local socket).
	DockerHost string
	// HostName is host.name of every event and the host token of every
	// subject; empty means os.Hostname().
	HostName string
	// ProcessSource chooses the link of the fallback chain (ModeAuto, or
	// one forced: fail when it does not work here).
	ProcessSource string
	// ProcessPollInterval is how often docker top is polled per container
	// (docker-top mode).
	ProcessPollInterval time.Duration
	// QueueSize bounds the events waiting to be published; beyond it events
	// are dropped and counted rather than blocking the sources.
	QueueSize int
	// MonitorLabel, when set ("key" or "key=value"), limits the
	// per-container sources to the containers carrying that label
	// (lifecycle and configuration telemetry still cover every container).
	MonitorLabel string
	// Fanotify reports file changes from fanotify beside the process
	// connector (the engine's data root must be at the same path as on the
	// host).
	Fanotify bool
	// Mounts are the host's /proc and cgroup mounts.
	Mounts source.HostMounts

	Sensor    sensor.Config
	Resources resources.Config
	Logs      logs.Config
	Files     diff.Config
	Sockets   sockets.Config
	Exposure  exposure.Config
	// Responses configures the executor of response actions.
	Responses executor.Config
}

// RegisterFlags registers the collector's flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	c.NATS.RegisterFlags(fs)
	c.Admin.RegisterFlags(fs, "127.0.0.1:9101")
	c.Log.RegisterFlags(fs)
	fs.StringVar(&c.DockerHost, "docker-host", "", "Docker engine address, e.g. unix:///var/run/docker.sock (empty: the Docker client's default)")
	fs.StringVar(&c.HostName, "host-name", "", "host.name of every event and host token of its subject (empty: the machine's hostname; set it when the collector runs in a container)")
	fs.StringVar(&c.ProcessSource, "process-source", ModeAuto, "source of process (and, with the kernel sensor, file and network) telemetry: auto (the first that works here of ebpf, proc-connector, docker-top), or one of them forced (the collector fails when it does not work)")
	fs.DurationVar(&c.ProcessPollInterval, "process-poll-interval", 500*time.Millisecond, "how often docker top is polled per running container (docker-top mode)")
	fs.IntVar(&c.QueueSize, "queue-size", 10000, "events buffered for publishing; when full, new events are dropped and counted")
	fs.StringVar(&c.MonitorLabel, "monitor-label", "", "when set (key or key=value), only containers with this label get the per-container sources (processes by docker top, resources, logs, files, sockets)")
	fs.StringVar(&c.Mounts.Proc, "host-proc", "/proc", "the host's /proc (mount it, and run in the host's PID namespace, when the collector runs in a container)")
	fs.StringVar(&c.Mounts.Cgroup, "host-cgroup", "/sys/fs/cgroup", "the host's cgroup mount: resource samples are read from containers' cgroup files there when readable, else asked of the Engine API (empty: always the Engine API)")
	fs.BoolVar(&c.Fanotify, "fanotify", true, "with the process connector, report file changes as they happen from fanotify on the filesystem of the engine's data root (docker diff then only reconciles)")
	c.Sensor.RegisterFlags(fs)
	c.Resources.RegisterFlags(fs)
	c.Logs.RegisterFlags(fs)
	c.Files.RegisterFlags(fs)
	c.Sockets.RegisterFlags(fs)
	c.Exposure.RegisterFlags(fs)
	c.Responses.RegisterFlags(fs)
}

// Validate checks c.
func (c *Config) Validate() error {
	var errs []error
	if c.ProcessPollInterval < 10*time.Millisecond {
		errs = append(errs, errors.New("process-poll-interval must be at least 10ms"))
	}
	switch c.ProcessSource {
	case ModeAuto, ModeEBPF, ModeProcConnector, ModeDockerTop:
	default:
		errs = append(errs, fmt.Errorf("process-source must be auto, ebpf, proc-connector or docker-top, not %q", c.ProcessSource))
	}
	if c.QueueSize < 1 {
		errs = append(errs, errors.New("queue-size must be positive"))
	}
	for _, sub := range []error{c.Sensor.Validate(), c.Resources.Validate(), c.Logs.Validate(), c.Files.Validate(),
		c.Sockets.Validate(), c.Exposure.Validate(), c.Responses.Validate()} {
		if sub != nil {
			errs = append(errs, sub)
		}
	}
	slices.SortStableFunc(errs, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
	return errors.Join(append(errs, c.NATS.Validate(), c.Admin.Validate(), c.Log.Validate())...)
}

// hostName resolves HostName's default.
func (c *Config) hostName() (string, error) {
	if c.HostName != "" {
		return c.HostName, nil
	}
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("host-name not set and os.Hostname failed: %w", err)
	}
	return h, nil
}

// monitored reports whether ctr gets the per-container sources.
func (c *Config) monitored(labels map[string]string) bool {
	if c.MonitorLabel == "" {
		return true
	}
	k, v, hasValue := strings.Cut(c.MonitorLabel, "=")
	got, ok := labels[k]
	return ok && (!hasValue || got == v)
}
