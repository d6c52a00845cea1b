package rules

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
)

const siteRule = `rules:
  - id: site-rule
    name: Site rule
    description: Flags the tool named in the condition.
    severity: low
    mitre: {tactic_id: TA0002, tactic: Execution, technique_id: T1059, technique: Command and Scripting Interpreter}
    kinds: [process]
    condition: process.tool == "TOOL"
    output: "{{ process.tool }} ran"
`

func writeRule(tb testing.TB, dir, name, content string, mtime time.Time) {
	tb.Helper()
	p := filepath.Join(dir, name)
	require.NoError(tb, os.WriteFile(p, []byte(content), 0o600))
	// An explicit mtime: two writes within the filesystem's timestamp
	// granularity must still look different.
	require.NoError(tb, os.Chtimes(p, mtime, mtime))
}

func ruleIDs(e *Engine, ev *event.Event) []string { return ids(e.Evaluate(ev, nil)) }

func TestEngineReload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	t0 := time.Unix(1_700_000_000, 0)
	writeRule(t, dir, "site.yaml", replaceTool(siteRule, "strace"), t0)
	reg := prometheus.NewRegistry()
	e, err := NewEngine(Config{Dir: dir, ReloadInterval: time.Hour}, slog.New(slog.NewTextHandler(io.Discard, nil)), reg)
	require.NoError(t, err)
	strace := proc(event.TelemetryProcess, "", event.Process{Args: []string{"strace"}})
	gdb := proc(event.TelemetryProcess, "", event.Process{Args: []string{"gdb"}})
	require.Equal(t, []string{"site-rule"}, ruleIDs(e, strace))
	require.False(t, e.ReloadIfChanged(), "nothing changed")

	writeRule(t, dir, "site.yaml", replaceTool(siteRule, "gdb"), t0.Add(time.Second))
	require.True(t, e.ReloadIfChanged())
	require.Empty(t, ruleIDs(e, strace))
	require.Equal(t, []string{"site-rule"}, ruleIDs(e, gdb))
	require.Equal(t, 1.0, testutil.ToFloat64(e.reloads.WithLabelValues("success")))

	// A broken file is rejected and the running rules stay.
	writeRule(t, dir, "broken.yaml", "rules:\n  - id: x\n    condition: (\n", t0)
	require.False(t, e.ReloadIfChanged())
	require.Equal(t, []string{"site-rule"}, ruleIDs(e, gdb))
	require.Equal(t, 1.0, testutil.ToFloat64(e.reloads.WithLabelValues("failure")))
	require.False(t, e.ReloadIfChanged(), "a broken file is reported once")

	// Fixing it brings the new set in.
	require.NoError(t, os.Remove(filepath.Join(dir, "broken.yaml")))
	writeRule(t, dir, "site.yaml", "disable: [suspicious-tool-netcat]\n", t0.Add(2*time.Second))
	require.True(t, e.ReloadIfChanged())
	require.Empty(t, ruleIDs(e, gdb))
	require.Empty(t, ruleIDs(e, proc(event.TelemetryProcess, "", event.Process{Args: []string{"nc"}})))
	require.Equal(t, float64(e.Set().Enabled()), testutil.ToFloat64(e.loaded))
}

func TestEngineStartsWithShippedRulesOnError(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeRule(t, dir, "bad.yaml", "rules: [", time.Unix(1_700_000_000, 0))
	c := Config{Dir: dir}
	require.ErrorContains(t, c.Validate(), filepath.Join(dir, "bad.yaml"))
	e, err := NewEngine(c, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	require.Error(t, err)
	require.NotNil(t, e)
	require.Equal(t, []string{"suspicious-tool-netcat"}, ruleIDs(e, proc(event.TelemetryProcess, "", event.Process{Args: []string{"nc"}})))
}

func TestEngineRunStopsWithContext(t *testing.T) {
	t.Parallel()
	e, err := NewEngine(Config{Dir: t.TempDir(), ReloadInterval: time.Millisecond}, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	cancel()
	require.NoError(t, <-done)
}

func replaceTool(s, tool string) string {
	return string(bytes.ReplaceAll([]byte(s), []byte("TOOL"), []byte(tool)))
}

func TestCLI(t *testing.T) {
	t.Parallel()
	run := func(args ...string) (int, string) {
		var out bytes.Buffer
		code := Main(args, &out, &out)
		return code, out.String()
	}
	code, out := run("lint")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "suspicious-tool-netcat")
	require.Contains(t, out, "\n  except label whalewatch.component=\"collector\" and image=\"whalewatch/collector\"",
		"lint shows the exemptions of whalewatch's own containers")

	samples, err := filepath.Glob("testdata/samples/*.jsonl")
	require.NoError(t, err)
	code, out = run(append([]string{"test"}, samples...)...)
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "high suspicious-tool-netcat: nc executed")
	require.Contains(t, out, " 0 expectations failed")

	dir := t.TempDir()
	failing := filepath.Join(dir, "f.jsonl")
	require.NoError(t, os.WriteFile(failing, []byte(`{"event":{"process":{"args":["nc"]},"whalewatch":{"telemetry":"process"}},"expect":[]}`+"\n"), 0o600))
	code, out = run("test", failing)
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "f.jsonl:1: FAIL: want [], got [suspicious-tool-netcat]")

	writeRule(t, dir, "bad.yaml", "rules: [", time.Now())
	code, out = run("lint", "-rules-dir", dir)
	require.Equal(t, 1, code)
	require.Contains(t, out, "bad.yaml:1")

	code, _ = run("frobnicate")
	require.Equal(t, 2, code)
	code, _ = run()
	require.Equal(t, 2, code)
}
