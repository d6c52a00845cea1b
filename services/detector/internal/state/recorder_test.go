package state

import (
	"context"
	"flag"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
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

var t0 = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

// clock is a settable wall clock.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func ev(cid string, kind event.Telemetry, at time.Time) *event.Event {
	return &event.Event{
		Timestamp:  at,
		Event:      event.Meta{ID: event.NewID(), Kind: event.KindEvent},
		Host:       event.Host{Name: "h"},
		Container:  &event.Container{ID: cid, Image: event.Image{Name: "registry.local/web", Tag: []string{"1.2"}}},
		Whalewatch: event.Whalewatch{SchemaVersion: event.SchemaVersion, Telemetry: kind},
	}
}

func connect(cid string, at time.Time, ip string, port int) *event.Event {
	e := ev(cid, event.TelemetryNetwork, at)
	e.Source = &event.Endpoint{IP: "172.17.0.2", Port: 40000 + port}
	e.Destination = &event.Endpoint{IP: ip, Port: port}
	e.Network = &event.Network{Transport: "tcp", Direction: "egress"}
	e.Whalewatch.Socket = &event.Socket{State: "syn_sent"}
	return e
}

func listen(cid string, at time.Time, port int) *event.Event {
	e := ev(cid, event.TelemetryNetwork, at)
	e.Source = &event.Endpoint{IP: "0.0.0.0", Port: port}
	e.Network = &event.Network{Transport: "tcp", Direction: "ingress"}
	e.Whalewatch.Socket = &event.Socket{State: "listen"}
	return e
}

func exec(cid string, at time.Time, parent, exe string) *event.Event {
	e := ev(cid, event.TelemetryProcess, at)
	e.Process = &event.Process{PID: 7, Name: exe, Executable: exe, Parent: &event.Parent{Executable: parent}}
	return e
}

func resource(cid string, at time.Time, cpu float64, rx, tx uint64) *event.Event {
	e := ev(cid, event.TelemetryResource, at)
	e.Whalewatch.Resource = &event.Resource{IntervalSeconds: 10, CPUPercent: cpu, NetRxBytes: rx, NetTxBytes: tx, PIDs: 3}
	return e
}

func newRecorder(t *testing.T, cfg Config, clk *clock, opts ...Option) *Recorder {
	return NewRecorder(cfg, prometheus.NewRegistry(), append([]Option{WithClock(clk.now)}, opts...)...)
}

func TestScanFanOut(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.BaselineLearning = 0
	r := newRecorder(t, cfg, &clock{t0})
	var s Snapshot
	for i := range 30 {
		s = r.Observe(connect("c1", t0.Add(time.Duration(i)*time.Second), fmt.Sprintf("10.0.0.%d", i%3), 1000+i))
	}
	require.Equal(t, 30, s.DistinctDestPorts)
	require.Equal(t, 3, s.DistinctDestHosts)
	require.Equal(t, 30, s.ConnAttempts)

	// The same socket established after syn_sent is not a second attempt.
	again := connect("c1", t0.Add(30*time.Second), "10.0.0.2", 1029)
	again.Whalewatch.Socket.State = "established"
	require.Zero(t, r.Observe(again).ConnAttempts)

	// Other containers have their own windows.
	require.Equal(t, 1, r.Observe(connect("c2", t0, "10.0.0.1", 80)).ConnAttempts)

	// 45 s later (event time) the first 15 left the one-minute window.
	s = r.Observe(connect("c1", t0.Add(75*time.Second), "10.0.0.9", 1000))
	require.Equal(t, 16, s.ConnAttempts)
	require.Equal(t, 16, s.DistinctDestPorts)

	// An event stamped in the past does not move the window back.
	s = r.Observe(connect("c1", t0, "10.0.0.9", 5))
	require.Equal(t, 17, s.ConnAttempts)

	// Other telemetry carries no scan counters.
	require.Zero(t, r.Observe(exec("c1", t0.Add(80*time.Second), "/bin/sh", "/bin/ls")).ConnAttempts)
}

func TestWindowsBounded(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.MaxWindowEntries = 10
	cfg.MaxContainers = 3
	cfg.IdleTimeout = time.Hour
	clk := &clock{t0}
	r := newRecorder(t, cfg, clk)
	var s Snapshot
	for i := range 100 {
		s = r.Observe(connect("c1", t0, "10.0.0.1", i))
		f := ev("c1", event.TelemetryFile, t0)
		f.File = &event.File{Path: fmt.Sprintf("/tmp/f%d", i)}
		f.Whalewatch.FileChange = &event.FileChange{Kind: "added"}
		r.Observe(f)
	}
	require.Equal(t, 10, s.ConnAttempts)
	w, ok := r.Window("c1")
	require.True(t, ok)
	require.Equal(t, 10, w.Dropped)

	for _, id := range []string{"c2", "c3", "c4"} {
		r.Observe(ev(id, event.TelemetryLog, t0))
	}
	require.Equal(t, 3, r.Containers())
	_, ok = r.Window("c1")
	require.False(t, ok, "least recently seen evicted")

	// die forgets at once; idle containers go after the idle timeout.
	die := ev("c2", event.TelemetryLifecycle, t0)
	die.Event.Action = "die"
	r.Observe(die)
	_, ok = r.Window("c2")
	require.False(t, ok)
	clk.t = t0.Add(2 * time.Hour)
	r.Observe(ev("c5", event.TelemetryLog, clk.t))
	require.Equal(t, 1, r.Containers())
}

func TestSustainedCPUAndTraffic(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	r := newRecorder(t, cfg, &clock{t0})
	var s Snapshot
	var rx uint64
	for i := range 6 {
		rx += 10_000 // 1 kB/s
		s = r.Observe(resource("c1", t0.Add(time.Duration(i*10)*time.Second), 95, rx, 0))
		require.False(t, s.TrafficSpike, "sample %d", i)
	}
	require.InDelta(t, 60, s.CPUHighSeconds, 0.001, "six 10 s samples above 80%%")
	require.InDelta(t, 1000, s.RxBytesPerSec, 0.001)

	rx += 100 << 20 // 10 MiB/s
	s = r.Observe(resource("c1", t0.Add(60*time.Second), 10, rx, 0))
	require.True(t, s.TrafficSpike)
	require.Zero(t, s.CPUHighSeconds, "dropped below the threshold")

	// A counter that went backwards (restart) gives no rate.
	s = r.Observe(resource("c1", t0.Add(70*time.Second), 10, 5, 0))
	require.Zero(t, s.RxBytesPerSec)

	// Relative to the CPU limit when there is one.
	e := resource("c2", t0, 50, 0, 0)
	e.Whalewatch.Resource.CPULimitPercent = 100
	require.InDelta(t, 10, r.Observe(e).CPUHighSeconds, 0.001)
}

func TestExecAfterDrop(t *testing.T) {
	t.Parallel()
	r := newRecorder(t, testConfig(t), &clock{t0})
	drop := func(cid, path, kind string, at time.Time) {
		f := ev(cid, event.TelemetryFile, at)
		f.File = &event.File{Path: path, Type: "file", Mode: "0755"}
		f.Whalewatch.FileChange = &event.FileChange{Kind: kind, Executable: true}
		r.Observe(f)
	}
	drop("c1", "/tmp/xmrig", "added", t0)
	drop("c1", "/tmp/gone", "added", t0)
	drop("c1", "/tmp/gone", "deleted", t0)

	s := r.Observe(exec("c1", t0.Add(time.Minute), "/bin/sh", "/tmp/xmrig"))
	require.True(t, s.ExecOfDroppedFile)
	require.Equal(t, "/tmp/xmrig", s.DroppedPath)
	require.False(t, r.Observe(exec("c2", t0.Add(time.Minute), "/bin/sh", "/tmp/xmrig")).ExecOfDroppedFile, "other container")
	require.False(t, r.Observe(exec("c1", t0.Add(time.Minute), "/bin/sh", "/tmp/gone")).ExecOfDroppedFile, "deleted")
	require.False(t, r.Observe(exec("c1", t0.Add(11*time.Minute), "/bin/sh", "/tmp/xmrig")).ExecOfDroppedFile, "after the drop window")

	// exec_start from Docker events counts too, by args[0] when no executable.
	drop("c3", "/dev/shm/x", "changed", t0)
	l := ev("c3", event.TelemetryLifecycle, t0.Add(time.Second))
	l.Event.Action = "exec_start"
	l.Process = &event.Process{Name: "x", Args: []string{"/dev/shm/x", "-o", "pool"}}
	require.True(t, r.Observe(l).ExecOfDroppedFile)
}

// fakeScorer records what it was asked.
type fakeScorer struct{ image string }

func (f *fakeScorer) Observe(image string, features []float64) (float64, []string) {
	f.image = image
	if len(features) != len(FeatureNames) {
		return 0, nil
	}
	return 0.9, []string{"cpu_percent"}
}

func TestAnomalyHook(t *testing.T) {
	t.Parallel()
	sc := &fakeScorer{}
	r := newRecorder(t, testConfig(t), &clock{t0}, WithScorer(sc))
	s := r.Observe(resource("c1", t0, 300, 0, 0))
	require.InDelta(t, 0.9, s.AnomalyScore, 0.0001)
	require.Equal(t, []string{"cpu_percent"}, s.AnomalyFeatures)
	require.Equal(t, "registry.local/web:1.2", sc.image)
	require.Zero(t, r.Observe(exec("c1", t0, "/bin/sh", "/bin/ls")).AnomalyScore, "only resource samples are scored")
}

func TestBaselineInMemory(t *testing.T) {
	t.Parallel()
	clk := &clock{t0}
	r := newRecorder(t, testConfig(t), clk)
	learn := []*event.Event{
		exec("c1", t0, "/bin/sh", "/usr/sbin/nginx"),
		listen("c1", t0, 80),
		connect("c1", t0, "10.0.0.5", 5432),
	}
	for _, e := range learn {
		s := r.Observe(e)
		require.True(t, s.BaselineLearning)
		require.False(t, s.NewProcess || s.NewParentChild || s.NewListenPort || s.NewDestination)
	}
	clk.t = t0.Add(time.Hour + time.Second)
	// Learned behaviour is not new, from any container of the image.
	for _, e := range learn {
		e.Container.ID = "c9"
		s := r.Observe(e)
		require.False(t, s.BaselineLearning)
		require.False(t, s.NewProcess || s.NewParentChild || s.NewListenPort || s.NewDestination, "%+v", s)
	}
	require.True(t, r.Observe(exec("c1", t0, "/bin/sh", "/tmp/miner")).NewProcess)
	s := r.Observe(exec("c1", t0, "/usr/sbin/nginx", "/bin/sh"))
	require.True(t, s.NewParentChild)
	require.True(t, s.NewProcess)
	require.True(t, r.Observe(listen("c1", t0, 4444)).NewListenPort)
	require.True(t, r.Observe(connect("c1", t0, "198.51.100.7", 3333)).NewDestination)
	// Another image learns on its own.
	other := exec("c1", t0, "/bin/sh", "/tmp/miner")
	other.Container.Image = event.Image{Name: "alpine", Hash: &event.ImageHash{All: []string{"sha256:abc"}}}
	s = r.Observe(other)
	require.True(t, s.BaselineLearning)
	require.False(t, s.NewProcess)
	b, ok := r.Baseline("alpine@sha256:abc")
	require.True(t, ok)
	require.Equal(t, []string{"/tmp/miner"}, b.Executables)
}

func TestImageKey(t *testing.T) {
	t.Parallel()
	tests := []struct {
		img  event.Image
		want string
	}{
		{event.Image{}, ""},
		{event.Image{Name: "nginx"}, "nginx"},
		{event.Image{Name: "nginx", Tag: []string{"1.25"}}, "nginx:1.25"},
		{event.Image{Name: "localhost:5000/app", Tag: []string{"v1"}}, "localhost:5000/app:v1"},
		{event.Image{Name: "nginx:1.25", Tag: []string{"1.25"}}, "nginx:1.25"},
		{event.Image{Name: "app", Hash: &event.ImageHash{All: []string{"sha256:00"}}}, "app@sha256:00"},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, ImageKey(&event.Container{ID: "x", Image: tt.img}))
		if tt.want != "" {
			got, err := ImageOfKey(KeyFor(tt.want))
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		}
	}
}

// TestBaselinesSharedInKV runs two replicas' recorders against one NATS KV:
// what each learned is merged, survives a restart, and a reset restarts
// learning.
func TestBaselinesSharedInKV(t *testing.T) {
	t.Parallel()
	s := natstest.Server(t)
	_, js := natstest.Connect(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	kv, err := OpenBaselines(ctx, js, 1, nil)
	require.NoError(t, err)
	_, err = OpenBaselines(ctx, js, 1, nil) // idempotent
	require.NoError(t, err)

	cfg := testConfig(t)
	cfg.BaselineFlush = 20 * time.Millisecond
	clk := &clock{t0}
	start := func() (*Recorder, context.CancelFunc) {
		r := newRecorder(t, cfg, clk)
		rctx, rcancel := context.WithCancel(ctx)
		ready := make(chan struct{})
		done := make(chan error, 1)
		go func() { done <- r.SyncBaselines(rctx, kv, ready, func(err error) { t.Log(err) }) }()
		<-ready
		return r, func() { rcancel(); require.NoError(t, <-done) }
	}
	r1, stop1 := start()
	r2, stop2 := start()
	r1.Observe(exec("a", t0, "/bin/sh", "/usr/bin/one"))
	r2.Observe(exec("b", t0, "/bin/sh", "/usr/bin/two"))
	const image = "registry.local/web:1.2"
	natstest.Eventually(t, 5*time.Second, func() bool {
		b1, _ := r1.Baseline(image)
		b2, _ := r2.Baseline(image)
		return len(b1.Executables) == 2 && len(b2.Executables) == 2
	}, "replicas did not share what they learned")
	stop1()
	stop2()

	// A restarted replica loads the baseline and, after learning, flags
	// only what neither replica saw.
	r3, stop3 := start()
	clk.t = t0.Add(2 * time.Hour)
	require.False(t, r3.Observe(exec("c", t0, "/bin/sh", "/usr/bin/one")).NewProcess)
	require.False(t, r3.Observe(exec("c", t0, "/bin/sh", "/usr/bin/two")).NewProcess)
	require.True(t, r3.Observe(exec("c", t0, "/bin/sh", "/usr/bin/three")).NewProcess)

	// A user's edit is picked up.
	entry, err := kv.Get(ctx, KeyFor(image))
	require.NoError(t, err)
	b, err := DecodeBaseline(entry.Value())
	require.NoError(t, err)
	b.Executables = append(b.Executables, "/usr/bin/three")
	_, err = kv.Put(ctx, KeyFor(image), b.Encode())
	require.NoError(t, err)
	natstest.Eventually(t, 5*time.Second, func() bool {
		return !r3.Observe(exec("c", t0, "/bin/sh", "/usr/bin/three")).NewProcess
	}, "edit not applied")

	// A reset restarts learning at the next sight.
	require.NoError(t, kv.Delete(ctx, KeyFor(image)))
	natstest.Eventually(t, 5*time.Second, func() bool {
		return r3.Observe(exec("c", t0, "/bin/sh", "/usr/bin/four")).BaselineLearning
	}, "reset not applied")
	natstest.Eventually(t, 5*time.Second, func() bool {
		entry, err := kv.Get(ctx, KeyFor(image))
		if err != nil {
			return false
		}
		b, err := DecodeBaseline(entry.Value())
		return err == nil && b.FirstSeen.Equal(clk.t) && len(b.Executables) == 1
	}, "relearned baseline not written")
	stop3()
}
