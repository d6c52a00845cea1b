package dockertest

import (
	"strings"
	"testing"
)

func TestBusyboxImageRunsApplets(t *testing.T) {
	id := Run(t, nil, "sleep", "30")
	out := Docker(t, "exec", id, "sh", "-c", "echo hi; nc --help 2>&1 | head -1; cat /proc/1/cmdline | tr '\\0' ' '")
	if !strings.Contains(out, "hi") || !strings.Contains(out, "sleep 30") {
		t.Fatalf("unexpected output %q", out)
	}
	if got := Docker(t, "inspect", "-f", "{{.HostConfig.NetworkMode}}", id); got != "none" {
		t.Fatalf("network mode %q, want none", got)
	}
}
