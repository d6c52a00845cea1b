package sensor

import (
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func newFlagSet(c *Config) *flag.FlagSet {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	c.RegisterFlags(fs)
	return fs
}

func TestConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{name: "defaults"},
		{name: "own prefixes", args: []string{"-sensor-sensitive-paths", "/srv/keys/, /etc/app.key"}},
		{name: "ring not a power of two", args: []string{"-sensor-ring-buffer-bytes", "1000000"}, wantErr: "power of two"},
		{name: "relative prefix", args: []string{"-sensor-sensitive-paths", "etc/shadow"}, wantErr: "absolute path"},
		{name: "long prefix", args: []string{"-sensor-sensitive-paths", "/" + strings.Repeat("a", 200)}, wantErr: "shorter than"},
		{name: "enrich wait", args: []string{"-sensor-enrich-wait", "2h"}, wantErr: "between 0 and 1m"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var c Config
			require.NoError(t, newFlagSet(&c).Parse(tc.args))
			err := c.Validate()
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tc.wantErr)
		})
	}
	var c Config
	require.NoError(t, newFlagSet(&c).Parse([]string{"-sensor-sensitive-paths", "/srv/keys/, /etc/app.key"}))
	require.Equal(t, []string{"/srv/keys/", "/etc/app.key"}, c.SensitivePaths)
	var d Config
	require.NoError(t, newFlagSet(&d).Parse(nil))
	require.Equal(t, DefaultSensitivePaths, d.SensitivePaths)
	require.Equal(t, 8<<20, d.RingBufferBytes)
	require.Equal(t, 2*time.Second, d.EnrichWait)
}
