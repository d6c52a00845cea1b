package resources

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/services/collector/internal/source"
)

func loadStats(t *testing.T, name string) *container.StatsResponse {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	require.NoError(t, err)
	var s container.StatsResponse
	require.NoError(t, json.Unmarshal(data, &s))
	return &s
}

func TestResourceSample(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		a, b       string
		ctr        source.Container
		want       event.Resource
		comparable bool
	}{
		{"cgroup v1, busy loop, unlimited", "stats-v1-a.json", "stats-v1-b.json", source.Container{}, event.Resource{
			IntervalSeconds: 1.02, CPUPercent: 81.99, MemoryBytes: 319488, PIDs: 1,
		}, true},
		{"cgroup v2, limits", "stats-v2-a.json", "stats-v2-b.json",
			source.Container{CPULimitCores: 0.5, Config: event.ContainerConfig{MemoryLimit: 64 << 20}}, event.Resource{
				IntervalSeconds: 10, CPUPercent: 50, CPULimitPercent: 100,
				MemoryBytes: 8 << 20, MemoryLimitBytes: 64 << 20, PIDs: 4,
				NetRxBytes: 210, NetTxBytes: 155, NetRxPackets: 5, NetTxPackets: 4,
				BlockReadBytes: 8192, BlockWriteBytes: 16385,
			}, true},
		{"counter went back (restart)", "stats-v2-b.json", "stats-v2-a.json", source.Container{}, event.Resource{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, ok := resourceSample(loadStats(t, tt.a), loadStats(t, tt.b), &tt.ctr)
			require.Equal(t, tt.comparable, ok)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestResourceSampleWallClockFallback(t *testing.T) {
	t.Parallel()
	a, b := loadStats(t, "stats-v2-a.json"), loadStats(t, "stats-v2-b.json")
	a.CPUStats.SystemUsage, b.CPUStats.SystemUsage = 0, 0 // an engine without system usage
	got, ok := resourceSample(a, b, &source.Container{})
	require.True(t, ok)
	require.Equal(t, 50.0, got.CPUPercent, "5 s of CPU in 10 s")
}

func TestResourceSampleTooCloseIsNoRate(t *testing.T) {
	t.Parallel()
	a, b := loadStats(t, "stats-v2-a.json"), loadStats(t, "stats-v2-b.json")
	a.CPUStats.SystemUsage, b.CPUStats.SystemUsage = 0, 0
	for _, gap := range []time.Duration{0, time.Millisecond, minSampleWall - time.Nanosecond} {
		b.Read = a.Read.Add(gap)
		_, ok := resourceSample(a, b, &source.Container{})
		require.False(t, ok, "samples %v apart make no rate (5 s of CPU in %v would be a spike)", gap, gap)
	}
	b.Read = a.Read.Add(minSampleWall)
	_, ok := resourceSample(a, b, &source.Container{})
	require.True(t, ok)
}

// fakeStats answers one-shot stats from recorded samples, in order.
type fakeStats struct {
	mu    sync.Mutex
	files []string
	calls int
}

func (f *fakeStats) ContainerStatsOneShot(_ context.Context, _ string) (container.StatsResponseReader, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if len(f.files) == 0 {
		return container.StatsResponseReader{}, errors.New("no more samples")
	}
	data, err := os.ReadFile(filepath.Join("testdata", f.files[0]))
	f.files = f.files[1:]
	if err != nil {
		return container.StatsResponseReader{}, err
	}
	return container.StatsResponseReader{Body: io.NopCloser(strings.NewReader(string(data)))}, nil
}

func TestResourceMonitorPublishesFromTheSecondSample(t *testing.T) {
	t.Parallel()
	f := &fakeStats{files: []string{"stats-v2-a.json", "stats-v2-b.json"}}
	r := &Monitor{docker: f, host: "h", cfg: Config{Interval: 100 * time.Millisecond, FastThreshold: 50}, log: quietLog(),
		errors: testCounter()}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	got := make(chan *event.Event, 10)
	done := make(chan error)
	go func() { done <- r.Monitor(ctx, &source.Container{ID: "c1"}, func(e *event.Event) { got <- e }) }()
	e := <-got
	require.Equal(t, event.TelemetryResource, e.Whalewatch.Telemetry)
	require.Equal(t, 50.0, e.Whalewatch.Resource.CPUPercent)
	require.Equal(t, "2026-11-26T20:00:10Z", e.Timestamp.Format(time.RFC3339Nano))
	require.Equal(t, []string{"host"}, e.Event.Category)
	e.Container = &event.Container{ID: "c1"}
	require.NoError(t, e.Validate())
	cancel()
	require.NoError(t, <-done)
	require.Empty(t, got, "the first sample is only a baseline; errors publish nothing")
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func testCounter() prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Name: "test"})
}

// sourceCounts is whalewatch_collector_resource_samples_total by source.
func sourceCounts(t *testing.T, reg prometheus.Gatherer) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "whalewatch_collector_resource_samples_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			got[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
		}
	}
	return got
}

// cgroupTree copies a recorded cgroup tree (../cgroupstats/testdata/<name>)
// into a temporary directory; it returns the monitor's config for it and
// the recorded container's id (its init pid is 4242).
func cgroupTree(t *testing.T, name string) (Config, source.HostMounts, string) {
	t.Helper()
	root := t.TempDir()
	require.NoError(t, os.CopyFS(root, os.DirFS(filepath.Join("..", "..", "cgroupstats", "testdata", name))))
	id, err := os.ReadFile(filepath.Join(root, "container-id"))
	require.NoError(t, err)
	return Config{Interval: 50 * time.Millisecond, FastThreshold: 50},
		source.HostMounts{Proc: filepath.Join(root, "proc"), Cgroup: filepath.Join(root, "sys", "fs", "cgroup")},
		strings.TrimSpace(string(id))
}

// The cgroup source yields what the engine API yields for the same
// counters: the v2 tree holds the counters of stats-v2-a.json, and
// stats-v2-b.json's CPU time 10 s later.
func TestResourceSampleFromCgroupMatchesEngineAPI(t *testing.T) {
	t.Parallel()
	cfg, mounts, id := cgroupTree(t, "v2")
	r := New(&fakeStats{}, cfg, mounts, "h", quietLog(), testCounter(), prometheus.NewRegistry())
	require.NotNil(t, r.cgroups)
	c, err := r.cgroups.Locate(4242, id)
	require.NoError(t, err)
	a, err := r.sampleCgroup(c)
	require.NoError(t, err)
	dir := filepath.Join(mounts.Cgroup, "system.slice", "docker-"+id+".scope")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "cpu.stat"), []byte("usage_usec 10000000\n"), 0o644))
	b, err := r.sampleCgroup(c)
	require.NoError(t, err)
	a.Read = b.Read.Add(-10 * time.Second)

	ctr := &source.Container{CPULimitCores: 0.5, Config: event.ContainerConfig{MemoryLimit: 64 << 20}}
	got, ok := resourceSample(a, b, ctr)
	require.True(t, ok)
	want, ok := resourceSample(loadStats(t, "stats-v2-a.json"), loadStats(t, "stats-v2-b.json"), ctr)
	require.True(t, ok)
	// The recorded engine stats and the tree differ only in network counters.
	want.NetRxBytes, want.NetTxBytes, want.NetRxPackets, want.NetTxPackets = 1296, 726, 12, 9
	require.Equal(t, want, got)
}

func TestResourceMonitorSources(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, tree string
		initPID    int
		host       bool // HostCgroup kept
		want       string
	}{
		{"cgroup v1", "v1", 4242, true, sourceCgroup},
		{"cgroup v2", "v2", 4242, true, sourceCgroup},
		{"no init pid: engine API", "v2", 0, true, sourceEngineAPI},
		{"pid not in the host's proc (remote engine): engine API", "v2", 4243, true, sourceEngineAPI},
		{"host-cgroup empty: engine API", "v2", 4242, false, sourceEngineAPI},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg, mounts, id := cgroupTree(t, tt.tree)
			if !tt.host {
				mounts.Cgroup = ""
			}
			f := &fakeStats{files: []string{"stats-v2-a.json", "stats-v2-b.json"}}
			reg := prometheus.NewRegistry()
			r := New(f, cfg, mounts, "h", quietLog(), testCounter(), reg)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			got := make(chan *event.Event, 10)
			done := make(chan error)
			go func() {
				done <- r.Monitor(ctx, &source.Container{ID: id, InitPID: tt.initPID}, func(e *event.Event) { got <- e })
			}()
			e := <-got
			e.Container = &event.Container{ID: id}
			require.NoError(t, e.Validate())
			cancel()
			require.NoError(t, <-done)
			counts := sourceCounts(t, reg)
			require.Equal(t, []string{tt.want}, slices.Collect(maps.Keys(counts)))
			f.mu.Lock()
			defer f.mu.Unlock()
			if tt.want == sourceCgroup {
				require.Zero(t, f.calls, "no stats request")
				require.Zero(t, e.Whalewatch.Resource.CPUPercent, "the recorded CPU time did not move")
			} else {
				require.Equal(t, 50.0, e.Whalewatch.Resource.CPUPercent)
			}
		})
	}
}

func TestAdaptiveInterval(t *testing.T) {
	t.Parallel()
	cfg := Config{Interval: 30 * time.Second, FastInterval: 5 * time.Second, FastThreshold: 50}
	for _, tt := range []struct {
		cpu  float64
		want time.Duration
	}{
		{0, 30 * time.Second},
		{49.9, 30 * time.Second},
		{50, 5 * time.Second},  // half a core: sampled fast
		{180, 5 * time.Second}, // two busy loops
	} {
		require.Equal(t, tt.want, cfg.next(tt.cpu), "cpu %v", tt.cpu)
	}
	cfg.FastInterval = 0
	require.Equal(t, 30*time.Second, cfg.next(100), "fast sampling off")
	short := Config{Interval: 2 * time.Second, FastInterval: 5 * time.Second, FastThreshold: 50}
	require.NoError(t, short.Validate(), "a short interval alone is valid")
	require.Equal(t, 2*time.Second, short.next(100), "a fast interval longer than the interval is not used")
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		cfg     Config
		wantErr string
	}{
		{Config{Interval: 30 * time.Second, FastInterval: 5 * time.Second, FastThreshold: 50}, ""},
		{Config{Interval: 0, FastInterval: 5 * time.Second, FastThreshold: 50}, ""},
		{Config{Interval: time.Millisecond, FastThreshold: 50}, "resource-interval must be 0 (disabled) or at least 100ms"},
		{Config{Interval: time.Second, FastThreshold: 0}, "resource-fast-threshold must be positive"},
		{Config{Interval: time.Second, FastThreshold: 50, Unchanged: -time.Second}, "resource-unchanged-interval must not be negative"},
	} {
		err := tt.cfg.Validate()
		if tt.wantErr == "" {
			require.NoError(t, err)
		} else {
			require.ErrorContains(t, err, tt.wantErr)
		}
	}
}

// An idle container's sample is published when something moved materially
// or Unchanged has passed; a busy container's (of a core or of its limit)
// always.
func TestPublishOnlyWhatMoved(t *testing.T) {
	t.Parallel()
	cfg := Config{Interval: 30 * time.Second, FastThreshold: 50, Unchanged: 5 * time.Minute}
	last := event.Resource{CPUPercent: 1, MemoryBytes: 100 << 20, PIDs: 3, NetRxBytes: 1000, NetTxBytes: 1000,
		BlockReadBytes: 5000, BlockWriteBytes: 5000}
	with := func(f func(r *event.Resource)) event.Resource { r := last; f(&r); return r }
	for _, tt := range []struct {
		name  string
		last  *event.Resource
		cur   event.Resource
		since time.Duration
		want  bool
	}{
		{"first sample", nil, last, 0, true},
		{"nothing moved", &last, with(func(r *event.Resource) { r.CPUPercent = 2.5; r.NetTxBytes += 100 }), 30 * time.Second, false},
		{"nothing moved for Unchanged", &last, last, 5 * time.Minute, true},
		{"busy: every sample", &last, with(func(r *event.Resource) { r.CPUPercent = 10 }), 30 * time.Second, true},
		{"busy within its limit: every sample", &event.Resource{CPUPercent: 5, CPULimitPercent: 100, MemoryBytes: 1 << 20},
			event.Resource{CPUPercent: 5, CPULimitPercent: 100, MemoryBytes: 1 << 20}, 30 * time.Second, true},
		{"idle within its limit, nothing moved", &event.Resource{CPUPercent: 0.1, CPULimitPercent: 2, MemoryBytes: 1 << 20},
			event.Resource{CPUPercent: 0.1, CPULimitPercent: 2, MemoryBytes: 1 << 20}, 30 * time.Second, false},
		{"busy last time, calm now", &event.Resource{CPUPercent: 90}, last, 5 * time.Second, true},
		{"cpu moved 2 points", &last, with(func(r *event.Resource) { r.CPUPercent = 3 }), 30 * time.Second, true},
		{"memory grew 5 %", &last, with(func(r *event.Resource) { r.MemoryBytes += 5 << 20 }), 30 * time.Second, true},
		{"memory grew 4 %", &last, with(func(r *event.Resource) { r.MemoryBytes += 4 << 20 }), 30 * time.Second, false},
		{"a process more", &last, with(func(r *event.Resource) { r.PIDs++ }), 30 * time.Second, true},
		{"64 KiB sent", &last, with(func(r *event.Resource) { r.NetTxBytes += 64 << 10 }), 30 * time.Second, true},
		{"64 KiB received", &last, with(func(r *event.Resource) { r.NetRxBytes += 64 << 10 }), 30 * time.Second, true},
		{"64 KiB written", &last, with(func(r *event.Resource) { r.BlockWriteBytes += 64 << 10 }), 30 * time.Second, true},
		{"64 KiB read", &last, with(func(r *event.Resource) { r.BlockReadBytes += 64 << 10 }), 30 * time.Second, true},
		{"counters reset (restart)", &last, with(func(r *event.Resource) { r.NetRxBytes = 0 }), 30 * time.Second, true},
		{"limit changed", &last, with(func(r *event.Resource) { r.MemoryLimitBytes = 1 << 30 }), 30 * time.Second, true},
	} {
		require.Equal(t, tt.want, cfg.publish(tt.last, tt.cur, tt.since), tt.name)
	}
	every := Config{Interval: 30 * time.Second, FastThreshold: 50}
	require.True(t, every.publish(&last, last, time.Second), "Unchanged 0: every sample")
}
