package collector

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestMonitorConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{"defaults", func(*Config) {}, ""},
		{"all disabled", func(c *Config) {
			c.ResourceInterval, c.DiffInterval, c.SocketInterval, c.ExposureInterval, c.Logs = 0, 0, 0, 0, false
			c.LogBatchLines = 0
		}, ""},
		{"tiny interval", func(c *Config) { c.SocketInterval = time.Millisecond }, "socket-interval must be 0 (disabled) or at least 100ms"},
		{"batch too large", func(c *Config) { c.Logs, c.LogBatchLines = true, 257 }, "log-batch-lines must be between 1 and 256"},
		{"no rate", func(c *Config) { c.Logs, c.LogMaxLinesPerSecond = true, 0 }, "log-max-lines-per-second must be positive"},
		{"no diff budget", func(c *Config) { c.DiffMaxChanges = 0 }, "diff-max-changes must be positive"},
		{"bad port", func(c *Config) { c.ExposureProbePorts = "2375,http" }, `exposure-probe-ports: "http" is not a port`},
		{"port out of range", func(c *Config) { c.ExposureProbePorts = "70000" }, "is not a port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig(t)
			tt.mutate(&cfg)
			err := cfg.Validate()
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
}

func TestExposurePorts(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	require.Equal(t, []int{2375, 2376}, cfg.exposurePorts())
	cfg.ExposureProbePorts = " 1, 2 ,,"
	require.Equal(t, []int{1, 2}, cfg.exposurePorts())
	cfg.ExposureProbePorts = ""
	require.Empty(t, cfg.exposurePorts())
}

func TestPhaseSpreadsContainers(t *testing.T) {
	t.Parallel()
	require.Equal(t, phase("abc", time.Second), phase("abc", time.Second), "stable")
	require.Less(t, phase("abc", time.Second), time.Second)
	require.NotEqual(t, phase("abc", time.Hour), phase("abd", time.Hour))
	require.Zero(t, phase("abc", 0))
}
