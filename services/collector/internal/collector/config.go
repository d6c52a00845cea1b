package collector

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/whalewatch/whalewatch/pkg/admin"
	"github.com/whalewatch/whalewatch/pkg/bus"
)

// Config is the collector's configuration.
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
	// ProcessPollInterval is how often docker top is polled per container.
	ProcessPollInterval time.Duration
	// ProcessSource selects the process source: auto (the netlink process
	// connector when it works, else docker-top), proc-connector (fail
	// without it) or docker-top.
	ProcessSource string
	// QueueSize bounds the events waiting to be published; beyond it events
	// are dropped and counted rather than blocking the Docker watchers.
	QueueSize int
	// Responses configures the response actions (actions.go).
	Responses ResponseConfig

	// Telemetry monitors (monitor_*.go, dockerapi_exposure.go); an interval
	// of 0 disables its monitor.
	ResourceInterval     time.Duration
	Logs                 bool
	LogBatchLines        int
	LogBatchInterval     time.Duration
	LogMaxLinesPerSecond int
	DiffInterval         time.Duration
	DiffMaxChanges       int
	SocketInterval       time.Duration
	ExposureInterval     time.Duration
	ExposureProbePorts   string
	// HostProc is where the host's /proc is mounted (the socket and file
	// monitors read /proc/<pid>/net and /proc/<pid>/root of containers).
	HostProc string
	// HostCgroup is where the host's cgroup hierarchy is mounted (the
	// resource monitor reads containers' cgroup files there; empty: always
	// the Engine API).
	HostCgroup string
	// monitorFilter, when set (tests), chooses the containers the resource,
	// log, file and socket monitors watch.
	monitorFilter func(*containerInfo) bool
}

// RegisterFlags registers the collector's flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	c.NATS.RegisterFlags(fs)
	c.Admin.RegisterFlags(fs, "127.0.0.1:9101")
	c.Log.RegisterFlags(fs)
	fs.StringVar(&c.DockerHost, "docker-host", "", "Docker engine address, e.g. unix:///var/run/docker.sock (empty: the Docker client's default)")
	fs.StringVar(&c.HostName, "host-name", "", "host.name of every event and host token of its subject (empty: the machine's hostname; set it when the collector runs in a container)")
	fs.DurationVar(&c.ProcessPollInterval, "process-poll-interval", 500*time.Millisecond, "how often docker top is polled per running container")
	fs.StringVar(&c.ProcessSource, "process-source", ModeAuto, "process source: auto (the netlink process connector when it works, else docker-top), proc-connector or docker-top")
	fs.IntVar(&c.QueueSize, "queue-size", 10000, "events buffered for publishing; when full, new events are dropped and counted")
	c.Responses.RegisterFlags(fs)
	c.registerMonitorFlags(fs)
}

// Validate checks c.
func (c *Config) Validate() error {
	var errs []error
	if c.ProcessPollInterval < 10*time.Millisecond {
		errs = append(errs, errors.New("process-poll-interval must be at least 10ms"))
	}
	switch c.ProcessSource {
	case ModeAuto, ModeProcConnector, ModeDockerTop:
	default:
		errs = append(errs, fmt.Errorf("process-source must be auto, proc-connector or docker-top, not %q", c.ProcessSource))
	}
	if c.QueueSize < 1 {
		errs = append(errs, errors.New("queue-size must be positive"))
	}
	return errors.Join(append(errs, c.NATS.Validate(), c.Admin.Validate(), c.Log.Validate(), c.Responses.Validate(), c.validateMonitors())...)
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
