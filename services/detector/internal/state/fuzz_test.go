package state

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// FuzzBaselineKey: any image name (container-controlled) makes a valid KV
// key that maps back to it, and any stored value decodes or errors.
func FuzzBaselineKey(f *testing.F) {
	f.Add("registry.local/web:1.2", []byte(`{"image":"x"}`))
	f.Add("a@sha256:00>*. \x00", []byte(`{"image":"","executables":[1]}`))
	f.Fuzz(func(t *testing.T, image string, value []byte) {
		key := KeyFor(image)
		for _, r := range key {
			if !(r == '.' || r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
				t.Fatalf("key %q has %q", key, r)
			}
		}
		if got, err := ImageOfKey(key); err != nil || got != image {
			t.Fatalf("ImageOfKey(KeyFor(%q)) = %q, %v", image, got, err)
		}
		if b, err := DecodeBaseline(value); err == nil {
			_ = b.Encode()
		}
	})
}

// FuzzObserve: hostile paths, names and addresses never crash the tracker.
func FuzzObserve(f *testing.F) {
	f.Add("c1", "/tmp/x", "nginx", 80, "10.0.0.1", "syn_sent", "added")
	f.Fuzz(func(t *testing.T, cid, path, image string, port int, ip, state, kind string) {
		var cfg Config
		cfg.MaxContainers, cfg.MaxWindowEntries, cfg.IdleTimeout = 4, 4, time.Minute
		cfg.ScanWindow, cfg.DropWindow, cfg.CPUSustainedPercent = time.Minute, time.Minute, 80
		cfg.SpikeFactor, cfg.BaselineLearning, cfg.BaselineMaxEntries, cfg.BaselineFlush = 10, time.Hour, 4, time.Second
		cfg.EvidenceItems, cfg.IncidentWindow = 2, time.Minute
		r := NewRecorder(cfg, prometheus.NewRegistry())
		mk := func(k event.Telemetry) *event.Event {
			e := ev(cid, k, t0)
			e.Container.Image.Name = image
			return e
		}
		n := mk(event.TelemetryNetwork)
		n.Source, n.Destination = &event.Endpoint{Port: port}, &event.Endpoint{IP: ip, Port: port}
		n.Whalewatch.Socket = &event.Socket{State: state}
		n.Process = &event.Process{PID: port}
		fe := mk(event.TelemetryFile)
		fe.File = &event.File{Path: path, TargetPath: ip}
		fe.Whalewatch.FileChange = &event.FileChange{Kind: kind, Operation: kind}
		p := mk(event.TelemetryProcess)
		p.Process = &event.Process{PID: port % 7, Executable: path, Args: []string{path, kind}, Parent: &event.Parent{Name: path, PID: port % 5}}
		p.Whalewatch.Ancestry = []event.Ancestor{{PID: port % 3, Name: ip}}
		x := mk(event.TelemetryLifecycle)
		x.Event.Action = "exec_start"
		x.Process = &event.Process{PID: port, Args: []string{path, "-c", kind}}
		c := mk(event.TelemetryConfig)
		c.Whalewatch.Config = &event.ContainerConfig{Healthcheck: []string{state, kind}}
		l := mk(event.TelemetryLog)
		l.Whalewatch.Log = &event.LogBatch{Lines: []string{path, ip, kind}}
		res := mk(event.TelemetryResource)
		res.Whalewatch.Resource = &event.Resource{CPUPercent: float64(port), NetRxBytes: uint64(port), IntervalSeconds: float64(port % 60)}
		for range 3 {
			for _, e := range []*event.Event{c, n, fe, p, x, l, res} {
				r.Observe(e)
				r.Incident("h", cid, kind, path, t0)
				r.Evidence(cid, port%7)
			}
		}
	})
}
