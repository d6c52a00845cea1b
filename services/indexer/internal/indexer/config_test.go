package indexer

import (
	"bytes"
	"flag"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/flagenv"
	"github.com/whalewatch/whalewatch/pkg/service"
)

func TestConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string // empty: valid
		check   func(t *testing.T, c Config)
	}{
		{
			name: "defaults with the URL from the environment",
			env:  map[string]string{"ELASTICSEARCH_URL": "http://127.0.0.1:9200"},
			check: func(t *testing.T, c Config) {
				require.Equal(t, []string{"http://127.0.0.1:9200"}, c.Elasticsearch.Addresses())
				require.Equal(t, "127.0.0.1:9103", c.Admin.Addr)
				require.Equal(t, "default", c.Elasticsearch.Namespace)
				require.Equal(t, 1000, c.BatchSize)
				require.Equal(t, 200*time.Millisecond, c.FlushInterval)
				require.True(t, c.IndexTelemetry)
			},
		},
		{
			name: "flags win over the environment",
			args: []string{"-elasticsearch-url", "https://es1:9200, https://es2:9200", "-batch-size", "50", "-index-telemetry=false"},
			env:  map[string]string{"ELASTICSEARCH_URL": "http://ignored:9200", "BATCH_SIZE": "7", "ELASTICSEARCH_NAMESPACE": "prod", "ELASTICSEARCH_API_KEY": "a2V5"},
			check: func(t *testing.T, c Config) {
				require.Equal(t, []string{"https://es1:9200", "https://es2:9200"}, c.Elasticsearch.Addresses())
				require.Equal(t, 50, c.BatchSize)
				require.False(t, c.IndexTelemetry)
				require.Equal(t, "prod", c.Elasticsearch.Namespace)
				require.Equal(t, "a2V5", c.Elasticsearch.APIKey)
			},
		},
		{name: "no URL", wantErr: "elasticsearch-url (ELASTICSEARCH_URL) is required"},
		{name: "only commas", args: []string{"-elasticsearch-url", " , "}, wantErr: "elasticsearch-url (ELASTICSEARCH_URL) is required"},
		{name: "not a URL", args: []string{"-elasticsearch-url", "127.0.0.1:9200"}, wantErr: "want http(s)://host:port"},
		{name: "both credentials", args: []string{"-elasticsearch-url", "http://es:9200", "-elasticsearch-api-key", "k", "-elasticsearch-username", "u"}, wantErr: "not both"},
		{name: "password alone", args: []string{"-elasticsearch-url", "http://es:9200", "-elasticsearch-password", "p"}, wantErr: "elasticsearch-username is not"},
		{name: "namespace with dash", args: []string{"-elasticsearch-url", "http://es:9200", "-elasticsearch-namespace", "a-b"}, wantErr: "must not contain '-'"},
		{name: "namespace uppercase", args: []string{"-elasticsearch-url", "http://es:9200", "-elasticsearch-namespace", "Prod"}, wantErr: "must be lowercase"},
		{name: "batch too large", args: []string{"-elasticsearch-url", "http://es:9200", "-batch-size", "100000"}, wantErr: "batch-size must be between 1 and 10000"},
		{name: "bad env value", env: map[string]string{"ELASTICSEARCH_URL": "http://es:9200", "FLUSH_INTERVAL": "soon"}, wantErr: "environment variable FLUSH_INTERVAL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := parseConfig(t, tt.args, tt.env)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			tt.check(t, c)
		})
	}
}

// Secrets never appear in configuration errors.
func TestConfigErrorsHideSecrets(t *testing.T) {
	t.Parallel()
	_, err := parseConfig(t, []string{"-elasticsearch-url", "ftp://elastic:hunter2@es:9200", "-elasticsearch-api-key", "s3cr3tkey",
		"-elasticsearch-username", "elastic", "-elasticsearch-password", "hunter2"}, nil)
	require.Error(t, err)
	require.NotContains(t, err.Error(), "hunter2")
	require.NotContains(t, err.Error(), "s3cr3tkey")
}

// The flag tables of the README are the ones the flags render, so the docs
// cannot drift from the code.
func TestREADMEFlagTable(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	for name, cfg := range map[string]interface{ RegisterFlags(*flag.FlagSet) }{
		"indexer": &Config{}, "indexer setup": &SetupConfig{}, "indexer streams": &service.StreamsConfig{},
	} {
		fs := flag.NewFlagSet(name, flag.ContinueOnError)
		cfg.RegisterFlags(fs)
		var table bytes.Buffer
		require.NoError(t, flagenv.WriteMarkdown(&table, fs))
		require.True(t, strings.Contains(string(readme), table.String()),
			"README.md's configuration table of %s is out of date; paste this:\n%s", name, table.String())
	}
}
