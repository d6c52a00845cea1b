package rules

import (
	"testing"

	"github.com/whalewatch/whalewatch/pkg/event"
)

func proc(telemetry event.Telemetry, action string, p event.Process) *event.Event {
	return &event.Event{
		Event:      event.Meta{ID: "x", Kind: event.KindEvent, Action: action},
		Process:    &p,
		Whalewatch: event.Whalewatch{Telemetry: telemetry, SchemaVersion: event.SchemaVersion},
	}
}

func TestEvaluate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ev   *event.Event
		want string // rule id, "" for no match
	}{
		{"nc listener (busybox applet via top)", proc(event.TelemetryProcess, "", event.Process{Name: "nc", Args: []string{"nc", "-l", "-p", "4444"}}), Netcat.ID},
		{"ncat by path", proc(event.TelemetryProcess, "", event.Process{Executable: "/usr/bin/ncat", Args: []string{"/usr/bin/ncat", "-e", "/bin/sh", "127.0.0.1", "9"}}), Netcat.ID},
		{"netcat uppercase", proc(event.TelemetryProcess, "", event.Process{Name: "NETCAT"}), Netcat.ID},
		{"busybox nc", proc(event.TelemetryProcess, "", event.Process{Executable: "/bin/busybox", Args: []string{"busybox", "nc", "-l"}}), Netcat.ID},
		{"wget via docker exec", proc(event.TelemetryLifecycle, "exec_start", event.Process{Args: []string{"wget", "-q", "-O-", "http://127.0.0.1/x"}}), Downloader.ID},
		{"curl", proc(event.TelemetryProcess, "", event.Process{Name: "curl", Args: []string{"curl", "-s", "http://127.0.0.1"}}), Downloader.ID},
		{"nmap", proc(event.TelemetryProcess, "", event.Process{Name: "nmap", Args: []string{"nmap", "-sS", "127.0.0.1"}}), Scanner.ID},
		{"masscan", proc(event.TelemetryProcess, "", event.Process{Executable: "/opt/masscan"}), Scanner.ID},

		{"sleep is benign", proc(event.TelemetryProcess, "", event.Process{Name: "sleep", Args: []string{"sleep", "3600"}}), ""},
		{"nc as an argument only", proc(event.TelemetryProcess, "", event.Process{Name: "grep", Args: []string{"grep", "nc", "/etc/services"}}), ""},
		{"name containing nc", proc(event.TelemetryProcess, "", event.Process{Name: "ncdu"}), ""},
		{"lifecycle other than exec_start", proc(event.TelemetryLifecycle, "start", event.Process{Args: []string{"nc", "-l"}}), ""},
		{"no process", &event.Event{Whalewatch: event.Whalewatch{Telemetry: event.TelemetryProcess}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := Engine{}.Evaluate(tt.ev)
			switch {
			case tt.want == "" && len(got) != 0:
				t.Fatalf("matched %s, want nothing", got[0].Rule.ID)
			case tt.want != "" && (len(got) != 1 || got[0].Rule.ID != tt.want):
				t.Fatalf("got %v, want %s", got, tt.want)
			}
		})
	}
}

func TestRulesAreComplete(t *testing.T) {
	t.Parallel()
	for _, r := range All {
		if r.ID == "" || r.Name == "" || r.Description == "" || !r.Severity.Valid() ||
			r.TechniqueID == "" || r.Technique == "" || r.TacticID == "" || r.Tactic == "" {
			t.Errorf("rule %+v lacks a field", r)
		}
	}
}

func BenchmarkEvaluate(b *testing.B) {
	benign := proc(event.TelemetryProcess, "", event.Process{Name: "python3", Executable: "/usr/bin/python3", Args: []string{"python3", "app.py"}})
	hit := proc(event.TelemetryProcess, "", event.Process{Name: "nc", Args: []string{"nc", "-l", "-p", "4444"}})
	for _, bc := range []struct {
		name string
		ev   *event.Event
	}{{"benign", benign}, {"match", hit}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				Engine{}.Evaluate(bc.ev)
			}
		})
	}
}
