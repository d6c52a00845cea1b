package state

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// BenchmarkContainerMemory measures the heap one tracked container costs
// after its per-container memory (process table, evidence rings, incident,
// health check) is full: "typical" with short command lines, log lines and
// paths, "worst" with every item at its bound (what a hostile container can
// make it hold). The scan and drop windows are left empty: they are bounded
// by -state-max-window-entries and measured elsewhere.
//
//	go test ./internal/state -run '^$' -bench ContainerMemory -benchtime 1x
func BenchmarkContainerMemory(b *testing.B) {
	for _, tc := range []struct {
		name string
		size int
	}{{"typical", 40}, {"worst", 10_000}} {
		b.Run(tc.name, func(b *testing.B) {
			const containers = 200
			for b.Loop() {
				cfg := testConfig(b)
				cfg.BaselineLearning = 0
				r := NewRecorder(cfg, prometheus.NewRegistry())
				before := heap()
				for c := range containers {
					fill(r, fmt.Sprintf("c%d", c), tc.size)
				}
				after := heap()
				b.ReportMetric(float64(after-before)/containers, "B/container")
				runtime.KeepAlive(r)
			}
		})
	}
}

func heap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// fill gives container cid a full process table, full evidence rings, an
// incident with many rules and a health check; items are about size bytes.
func fill(r *Recorder, cid string, size int) {
	at := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	long := func(i int) string { return fmt.Sprintf("%d-%s", i, strings.Repeat("x", size)) }
	cfg := ev(cid, event.TelemetryConfig, at)
	cfg.Whalewatch.Config = &event.ContainerConfig{Healthcheck: []string{"CMD-SHELL", long(0)}}
	r.Observe(cfg)
	for i := range 2 * maxProcesses {
		e := ev(cid, event.TelemetryProcess, at)
		e.Process = &event.Process{PID: 100 + i, Name: long(i), Executable: "/" + long(i), CommandLine: long(i),
			Args: []string{"/" + long(i)}, Parent: &event.Parent{PID: 99 + i}}
		r.Observe(e)
		l := ev(cid, event.TelemetryLog, at)
		l.Whalewatch.Log = &event.LogBatch{Stream: "stdout", Lines: []string{long(i)}}
		r.Observe(l)
		f := ev(cid, event.TelemetryFile, at)
		f.File = &event.File{Path: "/" + long(i)}
		f.Whalewatch.FileChange = &event.FileChange{Operation: "read"}
		r.Observe(f)
		n := ev(cid, event.TelemetryNetwork, at)
		n.Destination = &event.Endpoint{Address: long(i), Port: i}
		n.Network = &event.Network{Direction: "ingress"}
		n.Whalewatch.Socket = &event.Socket{State: "closed"}
		r.Observe(n)
		r.Incident("h", cid, fmt.Sprintf("rule-id-%d", i%40), "t", at) // rule ids come from rule files, not containers
	}
}
