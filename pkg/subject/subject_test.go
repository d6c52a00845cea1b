package subject

import (
	"strings"
	"testing"

	"github.com/whalewatch/whalewatch/pkg/event"
)

func TestToken(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"docker-host-1", "docker-host-1"},
		{"web.example.com", "web_example_com"},
		{"a*b>c d\te", "a_b_c_d_e"},
		{"", "_"},
		{"ünïcode", "ünïcode"},
		{strings.Repeat("x", 500), strings.Repeat("x", MaxToken)},
	}
	for _, tt := range tests {
		if got := Token(tt.in); got != tt.want {
			t.Errorf("Token(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestTelemetryRoundTrip(t *testing.T) {
	t.Parallel()
	s := Telemetry("host.one", "abc123", event.TelemetryProcess)
	if s != "whalewatch.telemetry.host_one.abc123.process" {
		t.Fatalf("subject %q", s)
	}
	got, err := ParseTelemetry(s)
	if err != nil {
		t.Fatal(err)
	}
	if got != (TelemetrySubject{Host: "host_one", ContainerID: "abc123", Kind: event.TelemetryProcess}) {
		t.Fatalf("parsed %+v", got)
	}
	for _, bad := range []string{"whalewatch.threats.high.x", "whalewatch.telemetry.h.c.bogus", "whalewatch.telemetry.h.process"} {
		if _, err := ParseTelemetry(bad); err == nil {
			t.Errorf("ParseTelemetry(%q) accepted", bad)
		}
	}
}

func TestForEvent(t *testing.T) {
	t.Parallel()
	e := &event.Event{Host: event.Host{Name: "h"}, Whalewatch: event.Whalewatch{Telemetry: event.TelemetryLifecycle}}
	if got := ForTelemetry(e); got != "whalewatch.telemetry.h._host.lifecycle" {
		t.Fatalf("host-scoped %q", got)
	}
	e.Container = &event.Container{ID: "c1"}
	if got := ForTelemetry(e); got != "whalewatch.telemetry.h.c1.lifecycle" {
		t.Fatalf("container %q", got)
	}
	th := &event.Event{Rule: &event.Rule{ID: "evil.>rule"}, Whalewatch: event.Whalewatch{Severity: event.SeverityHigh}}
	if got := ForThreat(th); got != "whalewatch.threats.high.evil__rule" {
		t.Fatalf("threat %q", got)
	}
}

func TestThreatsAtLeast(t *testing.T) {
	t.Parallel()
	got := strings.Join(ThreatsAtLeast(event.SeverityHigh), " ")
	if got != "whalewatch.threats.high.> whalewatch.threats.critical.>" {
		t.Fatalf("got %q", got)
	}
	if n := len(ThreatsAtLeast(event.SeverityLow)); n != 4 {
		t.Fatalf("low: %d filters", n)
	}
}

func FuzzToken(f *testing.F) {
	f.Add("web.example.com")
	f.Add("*>")
	f.Fuzz(func(t *testing.T, s string) {
		tok := Token(s)
		if tok == "" || strings.ContainsAny(tok, ".*> \t\r\n") || len(tok) > MaxToken+4 {
			t.Fatalf("Token(%q) = %q", s, tok)
		}
	})
}
