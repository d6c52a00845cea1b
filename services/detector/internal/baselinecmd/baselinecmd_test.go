package baselinecmd

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/services/detector/internal/state"
	"github.com/whalewatch/whalewatch/testkit/natstest"
)

func TestBaselineCommands(t *testing.T) {
	t.Parallel()
	s := natstest.Server(t)
	ctx := t.Context()
	run := func(args ...string) (string, error) {
		var out, errOut bytes.Buffer
		err := Main(ctx, append([]string{"-nats-url", s.ClientURL()}, args...), &out, &errOut)
		return out.String(), err
	}

	out, err := run("list")
	require.NoError(t, err)
	require.Contains(t, out, "IMAGE")

	now := time.Now().UTC().Truncate(time.Second)
	file := filepath.Join(t.TempDir(), "in.json")
	in := []state.Baseline{
		{Image: "registry.local/web:1.2", FirstSeen: now.Add(-2 * time.Hour), LearningUntil: now.Add(-time.Hour),
			Executables: []string{"/usr/sbin/nginx"}, ListenPorts: []string{"tcp/80"}},
		{Image: "app@sha256:00ff", FirstSeen: now, LearningUntil: now.Add(time.Hour)},
	}
	data, err := json.Marshal(in)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(file, data, 0o600))
	out, err = run("import", file)
	require.NoError(t, err)
	require.Contains(t, out, "imported registry.local/web:1.2")

	out, err = run("list")
	require.NoError(t, err)
	require.Regexp(t, `app@sha256:00ff\s+learning`, out)
	require.Regexp(t, `registry.local/web:1.2\s+enforcing`, out)

	out, err = run("show", "registry.local/web:1.2")
	require.NoError(t, err)
	var shown struct {
		Revision uint64 `json:"revision"`
		Learning bool   `json:"learning"`
		state.Baseline
	}
	require.NoError(t, json.Unmarshal([]byte(out), &shown))
	require.NotZero(t, shown.Revision)
	require.False(t, shown.Learning)
	require.Equal(t, []string{"/usr/sbin/nginx"}, shown.Executables)

	out, err = run("export")
	require.NoError(t, err)
	var exported []state.Baseline
	require.NoError(t, json.Unmarshal([]byte(out), &exported))
	require.Len(t, exported, 2)
	require.Equal(t, "app@sha256:00ff", exported[0].Image)

	_, err = run("reset", "app@sha256:00ff")
	require.NoError(t, err)
	_, err = run("show", "app@sha256:00ff")
	require.ErrorContains(t, err, `no baseline for image "app@sha256:00ff"`)
	_, err = run("reset", "nope:1")
	require.ErrorContains(t, err, "no baseline")

	_, err = run("frobnicate")
	require.ErrorContains(t, err, "unknown command")
	_, err = run("show")
	require.ErrorContains(t, err, "show takes 1 argument")
	require.NoError(t, os.WriteFile(file, []byte(`[{"first_seen":"2026-01-01T00:00:00Z"}]`), 0o600))
	_, err = run("import", file)
	require.ErrorContains(t, err, "has no image")
}
