package rules

import (
	"encoding/json"
	"path"
	"strings"
	"testing"
	"time"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/services/detector/internal/state"
)

// benchMix is a realistic stream: mostly benign process, resource, log and
// network telemetry, a few file and config events, one attack in 40.
func benchMix() []*event.Event {
	c := &event.Container{ID: "3f4e5d6c7b8a", Name: "api-7d9f", Image: event.Image{Name: "ghcr.io/acme/api", Tag: []string{"2.4.1"}},
		Labels: map[string]string{"com.docker.compose.service": "api", "env": "prod"}}
	base := func(t event.Telemetry) *event.Event {
		return &event.Event{Timestamp: time.Date(2026, 11, 26, 20, 0, 0, 0, time.UTC),
			Event: event.Meta{ID: "0123456789abcdef0123456789abcdef", Kind: event.KindEvent, Dataset: t.Dataset()},
			Host:  event.Host{Name: "docker-1"}, Container: c,
			Whalewatch: event.Whalewatch{SchemaVersion: event.SchemaVersion, Telemetry: t}}
	}
	procEv := func(parent string, args ...string) *event.Event {
		e := base(event.TelemetryProcess)
		e.Process = &event.Process{PID: 4242, Name: path.Base(args[0]), Args: args, ArgsCount: len(args),
			CommandLine: strings.Join(args, " "), Parent: &event.Parent{PID: 1, Name: parent}, User: &event.User{ID: "1000"}}
		return e
	}
	res := func(cpu float64) *event.Event {
		e := base(event.TelemetryResource)
		e.Whalewatch.Resource = &event.Resource{IntervalSeconds: 10, CPUPercent: cpu, MemoryBytes: 200 << 20, PIDs: 12,
			NetRxBytes: 1 << 30, NetTxBytes: 1 << 28}
		return e
	}
	logEv := func(lines ...string) *event.Event {
		e := base(event.TelemetryLog)
		e.Whalewatch.Log = &event.LogBatch{Stream: "stdout", Lines: lines}
		return e
	}
	netEv := func(ip string, port int) *event.Event {
		e := base(event.TelemetryNetwork)
		e.Network = &event.Network{Transport: "tcp", Type: "ipv4", Direction: "egress"}
		e.Source = &event.Endpoint{IP: "172.17.0.5", Port: 40000}
		e.Destination = &event.Endpoint{IP: ip, Port: port}
		e.Whalewatch.Socket = &event.Socket{State: "established"}
		return e
	}
	fileEv := func(p string) *event.Event {
		e := base(event.TelemetryFile)
		e.File = &event.File{Path: p, Type: "file"}
		e.Whalewatch.FileChange = &event.FileChange{Kind: "changed"}
		return e
	}
	cfg := base(event.TelemetryConfig)
	cfg.Whalewatch.Config = &event.ContainerConfig{User: "1000", ReadonlyRootfs: true, MemoryLimit: 1 << 30, NanoCPUs: 1e9, PidsLimit: 100,
		Mounts:         []event.Mount{{Type: "volume", Source: "/var/lib/docker/volumes/x/_data", Destination: "/data"}},
		PublishedPorts: []event.Port{{HostIP: "127.0.0.1", HostPort: "8080", ContainerPort: "80"}}}
	var mix []*event.Event
	for i := 0; i < 3; i++ {
		mix = append(mix,
			procEv("tini", "python3", "-m", "gunicorn", "app:app", "--workers", "4"),
			procEv("gunicorn", "/usr/local/bin/python3", "-m", "gunicorn", "app:app"),
			procEv("nginx", "nginx:", "worker", "process"),
			procEv("bash", "sleep", "30"),
			res(3.5), res(12), res(0.4),
			logEv(`10.0.0.7 - - [26/Nov/2026:20:00:00 +0000] "GET /healthz HTTP/1.1" 200 2 "-" "kube-probe/1.29"`,
				`10.0.0.8 - - [26/Nov/2026:20:00:01 +0000] "POST /api/v1/orders HTTP/1.1" 201 512 "-" "Mozilla/5.0"`,
				`INFO  [orders] order 81723 created in 12ms`),
			logEv(`WARN  [db] slow query took 230ms: SELECT * FROM orders WHERE id = $1`),
			netEv("10.0.0.20", 5432), netEv("10.0.0.21", 6379),
			fileEv("/var/cache/app/sessions.db"),
		)
	}
	mix = append(mix, cfg, procEv("bash", "nc", "-l", "-p", "4444"), netEv("93.184.216.34", 443))
	return mix
}

// legacyToolMatch is the detector's former hard-coded rule set (a map of
// tool names), kept as the baseline of BenchmarkEngine.
func legacyToolMatch(e *event.Event) bool {
	if e.Process == nil {
		return false
	}
	switch e.Whalewatch.Telemetry {
	case event.TelemetryProcess:
	case event.TelemetryLifecycle:
		if e.Event.Action != "exec_start" {
			return false
		}
	default:
		return false
	}
	switch ToolName(e.Process) {
	case "nc", "ncat", "netcat", "wget", "curl", "nmap", "masscan":
		return true
	}
	return false
}

// BenchmarkEngine measures the full shipped rule set on benchMix, against
// two baselines in the same run: the former hard-coded tool matcher, and
// decoding the same events from JSON (which the detector does for every
// event anyway). Run with -cpu 1 for per-core figures:
//
//	go test ./internal/rules -run '^$' -bench Engine -cpu 1 -benchmem
func BenchmarkEngine(b *testing.B) {
	mix := benchMix()
	set := shippedSet(b)
	var st state.Snapshot
	b.Run("rules=shipped", func(b *testing.B) {
		b.ReportAllocs()
		matches := 0
		i := 0
		for b.Loop() {
			matches += len(set.Evaluate(mix[i%len(mix)], &st))
			i++
		}
		b.ReportMetric(float64(i)/b.Elapsed().Seconds(), "events/s")
		if matches == 0 {
			b.Fatal("the attack in the mix was not detected")
		}
	})
	b.Run("baseline=legacy-tool-map", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			legacyToolMatch(mix[i%len(mix)])
			i++
		}
		b.ReportMetric(float64(i)/b.Elapsed().Seconds(), "events/s")
	})
	b.Run("baseline=json-decode", func(b *testing.B) {
		raw := make([][]byte, len(mix))
		for i, e := range mix {
			raw[i], _ = json.Marshal(e)
		}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := event.Decode(raw[i%len(raw)]); err != nil {
				b.Fatal(err)
			}
			i++
		}
		b.ReportMetric(float64(i)/b.Elapsed().Seconds(), "events/s")
	})
}
