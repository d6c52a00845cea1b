package collector

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/system"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// The Docker API calls of the resource, log and file monitors and of the
// exposure check. They are separate from dockerAPI so that an engine (or a
// test fake) without them simply runs without those monitors.
type (
	statsAPI interface {
		ContainerStatsOneShot(ctx context.Context, id string) (container.StatsResponseReader, error)
	}
	logsAPI interface {
		ContainerLogs(ctx context.Context, id string, options container.LogsOptions) (io.ReadCloser, error)
	}
	diffAPI interface {
		ContainerDiff(ctx context.Context, id string) ([]container.FilesystemChange, error)
	}
	infoAPI interface {
		Info(ctx context.Context) (system.Info, error)
	}
)

// telemetryMonitors builds the resource, log, file and socket monitors that
// cfg enables and docker supports, and the host-level exposure check (nil
// when disabled).
func (c *Collector) telemetryMonitors(reg prometheus.Registerer) ([]monitor, *exposureChecker) {
	m := newMonitorMetrics(reg)
	var mons []monitor
	if s, ok := c.docker.(statsAPI); ok && c.cfg.ResourceInterval > 0 {
		mons = append(mons, newResourceMonitor(s, &c.cfg, c.host, c.log, c.m.dockerErrors.WithLabelValues("stats"), reg))
	}
	if l, ok := c.docker.(logsAPI); ok && c.cfg.Logs {
		mons = append(mons, &logMonitor{
			docker: l, host: c.host, log: c.log, now: time.Now,
			batchLines: c.cfg.LogBatchLines, batchInterval: c.cfg.LogBatchInterval, rate: c.cfg.LogMaxLinesPerSecond,
			errors: c.m.dockerErrors.WithLabelValues("logs"), m: m,
		})
	}
	if d, ok := c.docker.(diffAPI); ok && c.cfg.DiffInterval > 0 {
		mons = append(mons, &fileMonitor{
			docker: d, host: c.host, interval: c.cfg.DiffInterval, maxChanges: c.cfg.DiffMaxChanges,
			procRoot: c.cfg.HostProc, log: c.log, now: time.Now,
			errors: c.m.dockerErrors.WithLabelValues("diff"), m: m,
		})
	}
	if c.cfg.SocketInterval > 0 {
		mons = append(mons, &socketMonitor{
			host: c.host, interval: c.cfg.SocketInterval, procRoot: c.cfg.HostProc, log: c.log, now: time.Now, m: m,
		})
	}
	if f := c.cfg.monitorFilter; f != nil {
		for i, mon := range mons {
			mons[i] = filteredMonitor{mon, f}
		}
	}
	var exp *exposureChecker
	if c.cfg.ExposureInterval > 0 {
		exp = &exposureChecker{
			host: c.host, interval: c.cfg.ExposureInterval, ports: c.cfg.exposurePorts(),
			dockerHost: c.cfg.DockerHost, log: c.log, now: time.Now,
		}
		if i, ok := c.docker.(infoAPI); ok {
			exp.info = i
		}
	}
	return mons, exp
}

// monitorMetrics are the metrics of the resource, log, file and socket
// monitors.
type monitorMetrics struct {
	logLines     *prometheus.CounterVec // by outcome: published, rate_limited, truncated
	fileOverflow prometheus.Counter
	sockOverflow prometheus.Counter
	sockSkipped  prometheus.Counter
	sockLooks    *prometheus.CounterVec // by result: read, unchanged
}

func newMonitorMetrics(reg prometheus.Registerer) *monitorMetrics {
	m := &monitorMetrics{
		logLines: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whalewatch_collector_log_lines_total",
			Help: "Container log lines read, by outcome (published, rate_limited, truncated).",
		}, []string{"outcome"}),
		fileOverflow: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "whalewatch_collector_file_changes_overflow_total",
			Help: "Filesystem changes not reported in a look because of -diff-max-changes (reported at a later look).",
		}),
		sockOverflow: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "whalewatch_collector_socket_overflow_total",
			Help: "Socket table reads cut at the per-container limit.",
		}),
		sockSkipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "whalewatch_collector_socket_skipped_total",
			Help: "Containers whose sockets are not watched (host network, or /proc unreadable).",
		}),
	}
	m.sockLooks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "whalewatch_collector_socket_looks_total",
		Help: "Socket looks of containers, by result: read (the tables were read) or unchanged (the namespace's counters had not moved).",
	}, []string{"result"})
	reg.MustRegister(m.logLines, m.fileOverflow, m.sockOverflow, m.sockSkipped, m.sockLooks)
	return m
}

// phase is how long a poller of container id waits before its first look:
// a fixed fraction of interval derived from the id, so that the pollers of
// many containers started together (at collector start) spread over the
// interval instead of hitting the engine at once.
func phase(id string, interval time.Duration) time.Duration {
	if interval <= 0 {
		return 0
	}
	h := fnv.New64a()
	h.Write([]byte(id))
	return time.Duration(h.Sum64() % uint64(interval))
}

// sleepCtx waits d or until ctx ends, reporting whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// warnOnce logs the first failure of a run of failures.
type warnOnce struct {
	log     *slog.Logger
	failing bool
}

func (w *warnOnce) fail(msg string, args ...any) {
	if !w.failing {
		w.log.Warn(msg, args...)
	}
	w.failing = true
}

func (w *warnOnce) ok() { w.failing = false }

func (c *Config) registerMonitorFlags(fs *flag.FlagSet) {
	fs.DurationVar(&c.ResourceInterval, "resource-interval", 30*time.Second, "how often each running container's CPU, memory, pids, network and block I/O are sampled (0 disables)")
	fs.BoolVar(&c.Logs, "logs", true, "follow each running container's stdout and stderr and publish them as log batches")
	fs.IntVar(&c.LogBatchLines, "log-batch-lines", 100, "log lines per batch at most (1 to 256)")
	fs.DurationVar(&c.LogBatchInterval, "log-batch-interval", time.Second, "how long a log line waits for its batch to fill before the batch is published")
	fs.IntVar(&c.LogMaxLinesPerSecond, "log-max-lines-per-second", 1000, "log lines per second published per container at most; the rest are dropped and counted")
	fs.DurationVar(&c.DiffInterval, "diff-interval", 30*time.Second, "how often each running container's filesystem changes (docker diff) are compared with the previous look (0 disables)")
	fs.IntVar(&c.DiffMaxChanges, "diff-max-changes", 1000, "file events per container per look at most; the rest follow at later looks")
	fs.DurationVar(&c.SocketInterval, "socket-interval", 10*time.Second, "how often each running container's socket tables are read for new listeners and connections (0 disables)")
	fs.DurationVar(&c.ExposureInterval, "exposure-interval", 5*time.Minute, "how often the Docker Engine API's TCP exposure is checked (0 disables)")
	fs.StringVar(&c.ExposureProbePorts, "exposure-probe-ports", "2375,2376", "comma-separated ports probed on 127.0.0.1 (only) for an Engine API answering without TLS")
	fs.StringVar(&c.HostProc, "host-proc", "/proc", "the host's /proc (mount it, and run in the host's PID namespace, when the collector runs in a container)")
	fs.StringVar(&c.HostCgroup, "host-cgroup", "/sys/fs/cgroup", "the host's cgroup mount: resource samples are read from containers' cgroup files there when readable, else asked of the Engine API (empty: always the Engine API)")
}

func (c *Config) validateMonitors() error {
	var errs []error
	for name, d := range map[string]time.Duration{
		"resource-interval": c.ResourceInterval, "diff-interval": c.DiffInterval,
		"socket-interval": c.SocketInterval, "exposure-interval": c.ExposureInterval,
	} {
		if d != 0 && d < 100*time.Millisecond {
			errs = append(errs, fmt.Errorf("%s must be 0 (disabled) or at least 100ms", name))
		}
	}
	if c.Logs {
		if c.LogBatchLines < 1 || c.LogBatchLines > event.MaxLogLines {
			errs = append(errs, fmt.Errorf("log-batch-lines must be between 1 and %d", event.MaxLogLines))
		}
		if c.LogBatchInterval < time.Millisecond {
			errs = append(errs, errors.New("log-batch-interval must be positive"))
		}
		if c.LogMaxLinesPerSecond < 1 {
			errs = append(errs, errors.New("log-max-lines-per-second must be positive"))
		}
	}
	if c.DiffMaxChanges < 1 {
		errs = append(errs, errors.New("diff-max-changes must be positive"))
	}
	if _, err := parsePorts(c.ExposureProbePorts); err != nil {
		errs = append(errs, fmt.Errorf("exposure-probe-ports: %w", err))
	}
	slices.SortFunc(errs, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
	return errors.Join(errs...)
}

// exposurePorts is ExposureProbePorts parsed (validated before).
func (c *Config) exposurePorts() []int {
	ports, _ := parsePorts(c.ExposureProbePorts)
	return ports
}

func parsePorts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := strconv.Atoi(f)
		if err != nil || p < 1 || p > 65535 {
			return nil, fmt.Errorf("%q is not a port", f)
		}
		out = append(out, p)
	}
	return out, nil
}

// filteredMonitor runs its monitor only for the containers ok accepts.
type filteredMonitor struct {
	monitor
	ok func(*containerInfo) bool
}

func (f filteredMonitor) Monitor(ctx context.Context, ctr *containerInfo, emit func(*event.Event)) error {
	if !f.ok(ctr) {
		return nil
	}
	return f.monitor.Monitor(ctx, ctr, emit)
}
