package indexer

import (
	"context"
	"flag"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/flagenv"
	"github.com/whalewatch/whalewatch/services/indexer/internal/kibana"
	"github.com/whalewatch/whalewatch/testkit/esstub"
	"github.com/whalewatch/whalewatch/testkit/kibanastub"
	"github.com/whalewatch/whalewatch/testkit/natstest"
)

func setupConfig(t *testing.T, env map[string]string, args ...string) SetupConfig {
	t.Helper()
	var cfg SetupConfig
	fs := flag.NewFlagSet("indexer setup", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg.RegisterFlags(fs)
	require.NoError(t, flagenv.Parse(fs, args, func(k string) string { return env[k] }))
	require.NoError(t, cfg.Validate())
	return cfg
}

// Setup installs policies, templates and saved objects; run again it
// replaces them with the same; it waits for Kibana to come up.
func TestSetup(t *testing.T) {
	t.Parallel()
	es := esstub.New(t, esstub.WithBasicAuth("elastic", "pw"))
	kb := kibanastub.New(t, kibanastub.WithBasicAuth("elastic", "pw"))
	kb.SetUnavailable(true) // Kibana starts after Elasticsearch
	cfg := setupConfig(t, map[string]string{
		"ELASTICSEARCH_URL": es.URL, "ELASTICSEARCH_USERNAME": "elastic", "ELASTICSEARCH_PASSWORD": "pw",
		"KIBANA_URL": kb.URL, "KIBANA_USERNAME": "elastic", "KIBANA_PASSWORD": "pw", "RETENTION_TELEMETRY": "168h",
	}, "-setup-timeout", "20s")
	done := make(chan error, 1)
	go func() { done <- Setup(context.Background(), cfg, testLogger(t)) }()
	natstest.Eventually(t, wait, func() bool { return kb.Requests() >= 2 }, "setup did not retry Kibana")
	kb.SetUnavailable(false)
	require.NoError(t, <-done)

	lines := strings.Count(strings.TrimSpace(string(kibana.Objects)), "\n") + 1
	check := func() {
		require.Len(t, kb.Objects(""), lines, "every saved object imported")
		imp := kb.Imports()[len(kb.Imports())-1]
		require.True(t, imp.Overwrite, "imported with overwrite=true")
		require.Equal(t, "whalewatch.ndjson", imp.Filename)
		require.Zero(t, imp.Errors)
		require.Len(t, es.Policies(), 3)
		require.Contains(t, string(es.Policies()["whalewatch-telemetry"].Body), `"min_age":"7d"`)
		require.Contains(t, string(es.Policies()["whalewatch-threats"].Body), `"min_age":"365d"`)
		require.Contains(t, string(es.Policies()["whalewatch-response"].Body), `"min_age":"365d"`)
		for _, name := range IndexTemplates() {
			require.Contains(t, es.Templates().Index, name)
		}
	}
	check()
	objects := kb.Objects("")

	// Idempotent: a second run replaces everything with the same.
	require.NoError(t, Setup(context.Background(), cfg, testLogger(t)))
	check()
	require.Equal(t, objects, kb.Objects(""))
	require.Len(t, kb.Imports(), 2)
}

func TestSetupFails(t *testing.T) {
	t.Parallel()
	t.Run("elasticsearch never up", func(t *testing.T) {
		t.Parallel()
		es := esstub.New(t)
		es.SetDown(true)
		cfg := setupConfig(t, nil, "-elasticsearch-url", es.URL, "-setup-timeout", "1s")
		require.ErrorContains(t, Setup(context.Background(), cfg, testLogger(t)), "elasticsearch did not take the templates")
	})
	t.Run("wrong kibana credentials", func(t *testing.T) {
		t.Parallel()
		es := esstub.New(t)
		kb := kibanastub.New(t, kibanastub.WithBasicAuth("elastic", "right"))
		cfg := setupConfig(t, nil, "-elasticsearch-url", es.URL, "-kibana-url", kb.URL,
			"-kibana-username", "elastic", "-kibana-password", "wrong", "-setup-timeout", "1s")
		err := Setup(context.Background(), cfg, testLogger(t))
		require.ErrorContains(t, err, "401")
		require.NotContains(t, err.Error(), "wrong")
	})
	t.Run("no kibana url: elasticsearch only", func(t *testing.T) {
		t.Parallel()
		es := esstub.New(t)
		cfg := setupConfig(t, nil, "-elasticsearch-url", es.URL)
		require.NoError(t, Setup(context.Background(), cfg, testLogger(t)))
		require.Len(t, es.Policies(), 3)
	})
}

// Objects refused one by one fail the import with each object named,
// without retrying.
func TestKibanaImportPerObjectErrors(t *testing.T) {
	t.Parallel()
	kb := kibanastub.New(t)
	c, err := kibana.NewClient(kibana.Config{URL: kb.URL, Timeout: 5 * time.Second})
	require.NoError(t, err)
	bad := `{"type":"search","id":"s1","attributes":{"title":"S"},"references":[{"name":"kibanaSavedObjectMeta.searchSourceJSON.index","type":"index-pattern","id":"gone"}]}` + "\n"
	res, err := c.Import(context.Background(), "x.ndjson", []byte(bad))
	require.ErrorIs(t, err, kibana.ErrObjects)
	require.ErrorContains(t, err, "search s1: missing_references")
	require.ErrorContains(t, err, "missing index-pattern gone")
	require.False(t, res.Success)
}

// The NDJSON under deploy/kibana is the one the binary embeds.
func TestKibanaObjectsInSync(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../../../../deploy/kibana/whalewatch.ndjson")
	require.NoError(t, err)
	require.Equal(t, string(b), string(kibana.Objects),
		"deploy/kibana/whalewatch.ndjson and services/indexer/internal/kibana/whalewatch.ndjson differ: copy one onto the other")
}
