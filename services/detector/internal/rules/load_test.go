package rules

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
)

func shippedSources(tb testing.TB) []Source {
	tb.Helper()
	srcs, err := Shipped()
	require.NoError(tb, err)
	require.NotEmpty(tb, srcs)
	return srcs
}

func shippedSet(tb testing.TB) *Set {
	tb.Helper()
	s, err := Load(shippedSources(tb), Options{})
	require.NoError(tb, err)
	return s
}

// wants returns the "# want: ..." lines of a bad rule file.
func wants(data []byte) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if w, ok := strings.CutPrefix(sc.Text(), "# want: "); ok {
			out = append(out, w)
		}
	}
	return out
}

// TestLoadFiles loads every testdata/load file on top of the shipped rules:
// *.good.yaml must load, *.bad.yaml must fail with each of its "# want:"
// lines in the error, which names the file and line.
func TestLoadFiles(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("testdata/load/*.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	shipped := shippedSources(t)
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			data, err := os.ReadFile(f)
			require.NoError(t, err)
			_, err = Load(append(shipped[:len(shipped):len(shipped)], Source{Name: name, Data: data}), Options{})
			if strings.HasSuffix(name, ".good.yaml") {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			w := wants(data)
			require.NotEmpty(t, w, "a bad file says what error it wants")
			for _, want := range w {
				require.Contains(t, err.Error(), want)
			}
		})
	}
}

func TestShippedRulesAreComplete(t *testing.T) {
	t.Parallel()
	s := shippedSet(t)
	ids := map[string]bool{}
	for _, r := range s.Rules() {
		require.False(t, ids[r.ID], "duplicate id %s", r.ID)
		ids[r.ID] = true
		require.True(t, r.Enabled, r.ID)
		require.True(t, r.Severity.Valid(), r.ID)
		require.NotEmpty(t, r.Name, r.ID)
		require.NotEmpty(t, r.Description, r.ID)
		require.Regexp(t, tacticPattern, r.TacticID, r.ID)
		require.Regexp(t, techniquePattern, r.TechniqueID, r.ID)
		require.NotEmpty(t, r.Kinds, r.ID)
	}
	// The tool rules keep the ids and severities the notifier and the
	// end-to-end test know.
	for id, sev := range map[string]event.Severity{
		"suspicious-tool-netcat":     event.SeverityHigh,
		"suspicious-tool-downloader": event.SeverityMedium,
		"suspicious-tool-scanner":    event.SeverityHigh,
	} {
		r := s.Rule(id)
		require.NotNil(t, r, id)
		require.Equal(t, sev, r.Severity, id)
	}
}

func TestOverrideDisableAppend(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("testdata/load/override.good.yaml")
	require.NoError(t, err)
	s, err := Load(append(shippedSources(t), Source{Name: "override.good.yaml", Data: data}), Options{})
	require.NoError(t, err)

	dl := s.Rule("suspicious-tool-downloader")
	require.Equal(t, event.SeverityLow, dl.Severity, "override changes the field given")
	require.Equal(t, "T1105", dl.TechniqueID, "and keeps the others")
	require.Len(t, dl.Exceptions, len(shippedSet(t).Rule("suspicious-tool-downloader").Exceptions)+2, "appended to the shipped ones")
	require.False(t, s.Rule("suspicious-tool-telnet").Enabled, "disable")
	require.False(t, s.Rule("writable-root-filesystem").Enabled, "enabled: false")
	require.Contains(t, s.List("trusted_registries"), "registry.example.com")
	require.Contains(t, s.List("trusted_registries"), "docker.io", "append keeps the shipped entries")

	curl := proc(event.TelemetryProcess, "", event.Process{Name: "curl", Args: []string{"curl", "-s", "http://127.0.0.1"}})
	require.Equal(t, []string{"suspicious-tool-downloader"}, ids(s.Evaluate(curl, nil)))
	curl.Container = &event.Container{ID: "c", Image: event.Image{Name: "curlimages/curl", Tag: []string{"8"}}}
	require.Empty(t, s.Evaluate(curl, nil), "exception by image")
	curl.Container = &event.Container{ID: "c", Labels: map[string]string{"healthcheck": "true"}}
	require.Empty(t, s.Evaluate(curl, nil), "exception by label")
	telnet := proc(event.TelemetryProcess, "", event.Process{Args: []string{"telnet", "10.0.0.1"}})
	require.Empty(t, s.Evaluate(telnet, nil), "disabled rule")
}

func TestOptions(t *testing.T) {
	t.Parallel()
	s, err := Load(shippedSources(t), Options{
		TrustedRegistries: []string{"registry.example.com"},
		Disable:           []string{"tag:configuration", "suspicious-tool-telnet"},
	})
	require.NoError(t, err)
	require.Equal(t, []string{"registry.example.com"}, s.List("trusted_registries"))
	require.False(t, s.Rule("container-privileged").Enabled)
	require.False(t, s.Rule("suspicious-tool-telnet").Enabled)
	require.True(t, s.Rule("suspicious-tool-netcat").Enabled)

	_, err = Load(shippedSources(t), Options{Disable: []string{"tag:nonesuch"}})
	require.ErrorContains(t, err, `no rule tagged "nonesuch"`)
}

func TestCustomRuleWithExceptionAndTemplate(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("testdata/load/custom-rule.good.yaml")
	require.NoError(t, err)
	s, err := Load(append(shippedSources(t), Source{Name: "custom.yaml", Data: data}), Options{})
	require.NoError(t, err)
	e := proc(event.TelemetryProcess, "", event.Process{Args: []string{"strace", "-p", "1"}})
	e.Container = &event.Container{ID: "c", Name: "api\n\x1b[31mred", Labels: map[string]string{"env": "prod"}}
	m := s.Evaluate(e, nil)
	require.Len(t, m, 1)
	require.Equal(t, "debugger-in-prod", m[0].Rule.ID)
	require.Equal(t, "strace attached in api  [31mred", m[0].Message, "control characters are blanked")
	e.Container.Image.Name = "registry.example.com/debug/tools"
	require.Empty(t, s.Evaluate(e, nil))
}

func TestOutputIsBounded(t *testing.T) {
	t.Parallel()
	s := shippedSet(t)
	long := strings.Repeat("A", 10000)
	e := &event.Event{
		Event:      event.Meta{ID: "x", Kind: event.KindEvent},
		Container:  &event.Container{ID: "c"},
		File:       &event.File{Path: "/etc/" + long},
		Whalewatch: event.Whalewatch{Telemetry: event.TelemetryFile, FileChange: &event.FileChange{Kind: "added"}},
	}
	m := s.Evaluate(e, nil)
	require.Len(t, m, 1)
	require.LessOrEqual(t, len(m[0].Message), maxField+64)
	require.Contains(t, m[0].Message, event.Ellipsis)
}

func ids(ms []Match) []string {
	out := []string{}
	for _, m := range ms {
		out = append(out, m.Rule.ID)
	}
	return out
}

func proc(telemetry event.Telemetry, action string, p event.Process) *event.Event {
	return &event.Event{
		Event:      event.Meta{ID: "x", Kind: event.KindEvent, Action: action},
		Process:    &p,
		Whalewatch: event.Whalewatch{Telemetry: telemetry, SchemaVersion: event.SchemaVersion},
	}
}

// FuzzLoad feeds arbitrary rule files to the loader: it returns a set or an
// error, never panics.
func FuzzLoad(f *testing.F) {
	files, _ := filepath.Glob("testdata/load/*.yaml")
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err == nil {
			f.Add(data)
		}
	}
	for _, s := range shippedSources(f) {
		f.Add(s.Data)
	}
	common := shippedSources(f)[0] // lists and macros, so fuzzed rules can use them
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Load([]Source{common, {Name: "fuzz.yaml", Data: data}}, Options{})
		if err == nil {
			s.Evaluate(proc(event.TelemetryProcess, "", event.Process{Args: []string{"nc", "-l"}}), nil)
		}
	})
}
