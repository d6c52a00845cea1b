// Package resources is the resource source: each running container's CPU,
// memory, pids, network and block I/O, sampled from the host's cgroup files
// or the Engine API, at a slow interval that turns fast while the container
// burns CPU (adaptive sampling).
package resources

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/poll"
	"github.com/whalewatch/whalewatch/services/collector/internal/cgroupstats"
	"github.com/whalewatch/whalewatch/services/collector/internal/source"
)

// Config configures the resource source.
type Config struct {
	// Interval is how often a calm container is sampled; 0 disables the
	// source.
	Interval time.Duration
	// FastInterval is how often a container is sampled while its CPU is at
	// or above FastThreshold (percent of one core): a miner burning a core
	// is seen within a minute, not after several slow samples. 0 keeps
	// Interval always.
	FastInterval  time.Duration
	FastThreshold float64
	// Unchanged is how often an idle container's sample is published when
	// nothing moved since the last one published (see changed): an idle
	// container costs NATS, the detector and Elasticsearch one event per
	// Unchanged instead of one per Interval. 0: every sample.
	Unchanged time.Duration
}

// RegisterFlags registers the resource flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.DurationVar(&c.Interval, "resource-interval", 30*time.Second, "how often each running container's CPU, memory, pids, network and block I/O are sampled (0 disables)")
	fs.DurationVar(&c.FastInterval, "resource-fast-interval", 5*time.Second, "how often a container is sampled while its CPU is at or above -resource-fast-threshold, until it calms down (0: always -resource-interval)")
	fs.Float64Var(&c.FastThreshold, "resource-fast-threshold", 50, "CPU, in percent of one core, from which a container is sampled at -resource-fast-interval")
	fs.DurationVar(&c.Unchanged, "resource-unchanged-interval", 5*time.Minute, "an idle container's sample (CPU under 10 % of a core and of its limit) that has not changed since the last one published (CPU within 2 points, memory within 5 %, same pids and limits, network and block I/O within 64 KiB) is published only this often (0: every sample)")
}

// Validate checks c.
func (c *Config) Validate() error {
	var errs []error
	if c.Interval != 0 && c.Interval < 100*time.Millisecond {
		errs = append(errs, errors.New("resource-interval must be 0 (disabled) or at least 100ms"))
	}
	if c.FastInterval != 0 && c.FastInterval < 100*time.Millisecond {
		errs = append(errs, errors.New("resource-fast-interval must be 0 (off) or at least 100ms"))
	}
	if c.Unchanged < 0 {
		errs = append(errs, errors.New("resource-unchanged-interval must not be negative"))
	}
	if c.FastThreshold <= 0 {
		errs = append(errs, errors.New("resource-fast-threshold must be positive"))
	}
	return errors.Join(errs...)
}

// next is the interval after a sample of cpu percent (of one core): fast
// while the container is hot, slow again once it calmed down.
func (c Config) next(cpu float64) time.Duration {
	// A fast interval at or above the normal one is no faster: sampling
	// stays at Interval (a short -resource-interval alone, as tests set it,
	// is valid).
	if c.FastInterval > 0 && c.FastInterval < c.Interval && cpu >= c.FastThreshold {
		return c.FastInterval
	}
	return c.Interval
}

// API is the engine call of the source.
type API interface {
	ContainerStatsOneShot(ctx context.Context, id string) (container.StatsResponseReader, error)
}

// Monitor samples a container's resource usage every interval,
// from the host's cgroup files when it can read the container's cgroup
// (source "cgroup"), else with a one-shot stats request
// (GET /containers/{id}/stats?stream=false&one-shot=true, source
// "engine-api"). The source is chosen once per container, at its first
// sample.
//
// The cgroup files are what the engine itself reads to answer a stats
// request: reading them directly saves the engine's work (its collection
// round, JSON encoding) and the collector's (HTTP, JSON decoding), and needs
// the host's /proc and cgroup mount, so an engine on another host (a remote
// DOCKER_HOST) or a collector without them falls back to the API.
// Both sources yield the same event: a cgroup sample is turned into the
// engine's stats shape and goes through resourceSample, CPU over wall time.
//
// One-shot rather than the stats stream: the engine's stats collector samples
// every subscribed container once a second, so a stream per container costs
// the engine (and the collector, decoding) a sample per second per
// container, nine of ten thrown away at the default interval; a one-shot
// request costs one sample per interval (bench/collector-stats-mode
// measures both). Neither source gives a previous CPU sample, so CPU
// percentages are computed here from two consecutive samples; the first
// sample of a container is a baseline and is not published.
type Monitor struct {
	docker  API
	cgroups cgroupReader // nil: always the engine API
	host    string
	cfg     Config
	log     *slog.Logger
	errors  prometheus.Counter
	samples *prometheus.CounterVec // by source; nil in tests that do not count
	// unchanged counts samples not published (nothing moved); nil in
	// tests that do not count.
	unchanged prometheus.Counter
}

type cgroupReader interface {
	Locate(pid int, containerID string) (*cgroupstats.Container, error)
	Read(c *cgroupstats.Container) (cgroupstats.Sample, error)
}

// Resource sample sources, the label of
// whalewatch_collector_resource_samples_total.
const (
	sourceCgroup    = "cgroup"
	sourceEngineAPI = "engine-api"
)

// New is the resource source of cfg: it reads cgroups under mounts.Cgroup
// (unless empty) for processes under mounts.Proc, and logs which source it
// will use. errs counts failed samples.
func New(docker API, cfg Config, mounts source.HostMounts, host string, log *slog.Logger, errs prometheus.Counter, reg prometheus.Registerer) *Monitor {
	r := &Monitor{docker: docker, host: host, cfg: cfg, log: log, errors: errs,
		samples: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whalewatch_collector_resource_samples_total",
			Help: "Container resource samples taken, by source: cgroup (the host's cgroup files) or engine-api (one-shot stats requests).",
		}, []string{"source"}),
		unchanged: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "whalewatch_collector_resource_samples_unchanged_total",
			Help: "Resource samples of calm containers not published because nothing moved since the last one published (-resource-unchanged-interval).",
		}),
	}
	reg.MustRegister(r.samples, r.unchanged)
	if mounts.Cgroup == "" {
		log.Info("resource samples through the engine API", "source", sourceEngineAPI, "reason", "host-cgroup is empty")
		return r
	}
	cg, err := cgroupstats.New(mounts.Proc, mounts.Cgroup)
	if err != nil {
		log.Info("resource samples through the engine API", "source", sourceEngineAPI, "reason", err.Error())
		return r
	}
	r.cgroups = cg
	log.Info("resource samples from cgroup files where readable, else the engine API",
		"source", sourceCgroup, "cgroup", cg.Version().String(), "host_cgroup", mounts.Cgroup, "host_proc", mounts.Proc)
	return r
}

// Thresholds of a material change between two resource samples, and the
// CPU below which a container counts as idle (of one core, or of its limit):
// only idle containers skip samples, so the sustained-CPU rules (80 % of a
// core or of the limit) and the adaptive sampling see every sample of a
// busy one.
const (
	idleCPUPercent     = 10
	changedCPUPoints   = 2    // percent of one core
	changedMemoryRatio = 0.05 // of the memory last published
	changedIOBytes     = 64 << 10
)

// publish tells whether sample cur is published, given the last sample
// published (nil: none) and the time since: always when the container is
// not idle (the sustained-CPU rules need every sample) or anything moved
// materially, otherwise once per Unchanged. The
// detector's rates stay right whatever is skipped: its counters are
// cumulative and its rates are over the time between published samples.
func (c *Config) publish(last *event.Resource, cur event.Resource, since time.Duration) bool {
	if c.Unchanged <= 0 || last == nil || since >= c.Unchanged || max(cur.CPUPercent, cur.CPULimitPercent) >= idleCPUPercent {
		return true
	}
	grew := func(now, then uint64) bool { return now < then || now-then >= changedIOBytes }
	return math.Abs(cur.CPUPercent-last.CPUPercent) >= changedCPUPoints ||
		math.Abs(float64(cur.MemoryBytes-last.MemoryBytes)) >= changedMemoryRatio*float64(last.MemoryBytes) ||
		cur.PIDs != last.PIDs || cur.MemoryLimitBytes != last.MemoryLimitBytes ||
		grew(cur.NetRxBytes, last.NetRxBytes) || grew(cur.NetTxBytes, last.NetTxBytes) ||
		grew(cur.BlockReadBytes, last.BlockReadBytes) || grew(cur.BlockWriteBytes, last.BlockWriteBytes)
}

// maxStatsBody bounds one stats answer; a real one is a few KiB.
const maxStatsBody = 1 << 20

// Monitor samples ctr until ctx ends: every Interval, or every
// FastInterval while the last sample's CPU was at or above FastThreshold.
func (r *Monitor) Monitor(ctx context.Context, ctr *source.Container, emit source.Emit) error {
	log := r.log.With("container_id", ctr.ID)
	var cg *cgroupstats.Container
	if r.cgroups != nil {
		c, err := r.cgroups.Locate(ctr.InitPID, ctr.ID)
		if err != nil {
			log.Debug("container cgroup not readable: resource samples through the engine API", "err", err)
		} else {
			defer c.Close()
		}
		cg = c
	}
	// Engine API samples are spread over the interval (the engine answers
	// them in its collection rounds); cgroup samples of every container are
	// taken at the same instants, so that 200 idle containers wake the
	// collector once per interval rather than 200 times.
	src, phase := sourceEngineAPI, poll.Phase(ctr.ID, r.cfg.Interval)
	if cg != nil {
		src, phase = sourceCgroup, source.UntilTick(time.Now(), r.cfg.Interval, poll.Phase(r.host, r.cfg.Interval))
	}
	var prev *container.StatsResponse
	lastCPU := 0.0
	var published *event.Resource // the last sample published
	var publishedAt time.Time
	loop := poll.Loop{
		What: "container stats (" + src + ")", Interval: r.cfg.Interval, Phase: phase,
		Log: log, Failures: r.errors,
		Next: func() time.Duration { return r.cfg.next(lastCPU) },
	}
	return loop.Run(ctx, func(ctx context.Context) error {
		var cur *container.StatsResponse
		var err error
		if cg != nil {
			cur, err = r.sampleCgroup(cg)
		} else {
			cur, err = r.sample(ctx, ctr.ID)
		}
		if err != nil {
			return err
		}
		if r.samples != nil {
			r.samples.WithLabelValues(src).Inc()
		}
		if prev != nil {
			if res, ok := resourceSample(prev, cur, ctr); ok {
				if r.cfg.publish(published, res, cur.Read.Sub(publishedAt)) {
					emit(resourceEvent(r.host, ctr.ID, cur.Read, res))
					published, publishedAt = &res, cur.Read
				} else if r.unchanged != nil {
					r.unchanged.Inc()
				}
				if r.cfg.next(res.CPUPercent) != r.cfg.next(lastCPU) {
					log.Debug("resource sampling interval changes", "cpu_percent", res.CPUPercent, "interval", r.cfg.next(res.CPUPercent))
				}
				lastCPU = res.CPUPercent
			}
		}
		prev = cur
		return nil
	})
}

// sampleCgroup reads c's cgroup files into the engine's stats shape, read
// now (with a monotonic clock reading: CPU % is over the wall time between
// two samples, as the engine's own with no system usage).
func (r *Monitor) sampleCgroup(c *cgroupstats.Container) (*container.StatsResponse, error) {
	read := time.Now() // before the counters: a stall after them must not shrink the interval
	s, err := r.cgroups.Read(c)
	if err != nil {
		return nil, err
	}
	var st container.StatsResponse
	st.Read = read
	st.CPUStats.CPUUsage.TotalUsage = s.CPUUsageNanos
	st.MemoryStats.Usage = s.MemoryUsage
	st.MemoryStats.Limit = s.MemoryLimit
	st.MemoryStats.Stats = map[string]uint64{"inactive_file": s.InactiveFile}
	st.PidsStats.Current = s.PIDs
	st.Networks = map[string]container.NetworkStats{"all": {
		RxBytes: s.Net.RxBytes, TxBytes: s.Net.TxBytes, RxPackets: s.Net.RxPackets, TxPackets: s.Net.TxPackets,
	}}
	st.BlkioStats.IoServiceBytesRecursive = []container.BlkioStatEntry{
		{Op: "read", Value: s.ReadBytes}, {Op: "write", Value: s.WriteBytes},
	}
	return &st, nil
}

// minSampleWall is the shortest time between two samples that makes a rate
// (intervals are at least 100 ms; a glitch gave two samples 1 ms apart).
const minSampleWall = 20 * time.Millisecond

// statsTimeout bounds one stats request. The engine answers a one-shot
// request at its next collection round (every second) over all containers
// whose stats are asked, which takes long on a loaded host.
const statsTimeout = 30 * time.Second

func (r *Monitor) sample(ctx context.Context, id string) (*container.StatsResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, statsTimeout)
	defer cancel()
	resp, err := r.docker.ContainerStatsOneShot(ctx, id)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var s container.StatsResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxStatsBody)).Decode(&s); err != nil {
		return nil, fmt.Errorf("decoding stats: %w", err)
	}
	if s.Read.IsZero() {
		return nil, fmt.Errorf("stats without a read time (container not running?)")
	}
	return &s, nil
}

// resourceSample computes the sample of cur against prev, as docker stats
// does: CPU is the container's CPU time over the host's CPU time between the
// two, times the online CPUs (falling back to wall time when the engine gives
// no system usage); memory is usage minus the inactive page cache. It is
// false when the two samples cannot be compared (a counter went back: the
// container restarted) or are too close together for a rate: a stall of the
// reader between reading the counters and the clock, small next to the
// interval, is not next to a few milliseconds (a 3,000 % "spike" was seen on a
// loaded host when a dying container was sampled twice within 1 ms).
func resourceSample(prev, cur *container.StatsResponse, ctr *source.Container) (event.Resource, bool) {
	wall := cur.Read.Sub(prev.Read)
	if wall < minSampleWall || cur.CPUStats.CPUUsage.TotalUsage < prev.CPUStats.CPUUsage.TotalUsage {
		return event.Resource{}, false
	}
	res := event.Resource{IntervalSeconds: round2(wall.Seconds())}
	cpuDelta := float64(cur.CPUStats.CPUUsage.TotalUsage - prev.CPUStats.CPUUsage.TotalUsage)
	online := float64(cur.CPUStats.OnlineCPUs)
	if online == 0 {
		online = float64(len(cur.CPUStats.CPUUsage.PercpuUsage))
	}
	if sysDelta := float64(cur.CPUStats.SystemUsage) - float64(prev.CPUStats.SystemUsage); sysDelta > 0 && online > 0 {
		res.CPUPercent = cpuDelta / sysDelta * online * 100
	} else {
		res.CPUPercent = cpuDelta / float64(wall.Nanoseconds()) * 100
	}
	res.CPUPercent = round2(res.CPUPercent)
	if ctr.CPULimitCores > 0 {
		res.CPULimitPercent = round2(res.CPUPercent / ctr.CPULimitCores)
	}

	mem := cur.MemoryStats
	usage := mem.Usage
	// cgroup v1 (total_inactive_file) and v2 (inactive_file) page cache, as
	// the docker CLI subtracts it.
	for _, k := range []string{"total_inactive_file", "inactive_file"} {
		if v, ok := mem.Stats[k]; ok {
			if v < usage {
				usage -= v
			}
			break
		}
	}
	res.MemoryBytes = clampInt64(usage)
	if ctr.Config.MemoryLimit > 0 { // the engine reports the host's memory as the limit of an unlimited container
		res.MemoryLimitBytes = clampInt64(mem.Limit)
	}
	res.PIDs = clampInt64(cur.PidsStats.Current)
	for _, n := range cur.Networks {
		res.NetRxBytes += n.RxBytes
		res.NetTxBytes += n.TxBytes
		res.NetRxPackets += n.RxPackets
		res.NetTxPackets += n.TxPackets
	}
	for _, b := range cur.BlkioStats.IoServiceBytesRecursive {
		switch strings.ToLower(b.Op) { // v1: Read/Write, v2: read/write
		case "read":
			res.BlockReadBytes += b.Value
		case "write":
			res.BlockWriteBytes += b.Value
		}
	}
	return res, true
}

// resourceEvent is one resource sample as telemetry (ECS host/info: ECS has
// no category for container metrics; "host" is the closest allowed value).
func resourceEvent(host, containerID string, read time.Time, r event.Resource) *event.Event {
	return &event.Event{
		Timestamp: read.UTC(),
		Message:   fmt.Sprintf("cpu %.1f%%, memory %d bytes, %d pids", r.CPUPercent, r.MemoryBytes, r.PIDs),
		Event: event.Meta{
			ID:       event.DeriveID(host, "resource", containerID, strconv.FormatInt(read.UnixNano(), 10)),
			Kind:     event.KindEvent,
			Category: []string{"host"},
			Type:     []string{"info"},
			Action:   "resource-sample",
			Dataset:  event.TelemetryResource.Dataset(),
			Module:   event.Module,
			Created:  time.Now().UTC(),
		},
		Host: event.Host{Name: host},
		Whalewatch: event.Whalewatch{
			SchemaVersion: event.SchemaVersion,
			Telemetry:     event.TelemetryResource,
			Resource:      &r,
		},
	}
}

func round2(f float64) float64 { return float64(int64(f*100+0.5)) / 100 }

func clampInt64(v uint64) int64 {
	if v > 1<<63-1 {
		return 1<<63 - 1
	}
	return int64(v)
}
