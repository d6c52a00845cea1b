package service

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/admin"
)

type testConfig struct {
	Log  admin.LogConfig
	Name string
}

func (c *testConfig) RegisterFlags(fs *flag.FlagSet) {
	c.Log.RegisterFlags(fs)
	fs.StringVar(&c.Name, "name", "", "a required name")
}

func (c *testConfig) Validate() error {
	if c.Name == "" {
		return errors.New("name is required")
	}
	return c.Log.Validate()
}

func TestRun1(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		runErr   error
		wantCode int
		wantOut  string
		wantRan  string
	}{
		{name: "runs with flags", args: []string{"-name", "a"}, wantCode: 0, wantRan: "a"},
		{name: "runs with env", env: map[string]string{"NAME": "b"}, wantCode: 0, wantRan: "b"},
		{name: "invalid config", wantCode: 2, wantOut: "svc: invalid configuration: name is required"},
		{name: "bad env value", env: map[string]string{"NAME": "x", "LOG_LEVEL": "loud"}, wantCode: 2, wantOut: "log-level"},
		{name: "unknown flag", args: []string{"-nope"}, wantCode: 2, wantOut: "flag provided but not defined"},
		{name: "run fails", args: []string{"-name", "c"}, runErr: errors.New("boom"), wantCode: 1, wantOut: "svc failed", wantRan: "c"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var cfg testConfig
			var out strings.Builder
			ran := ""
			code := run1(context.Background(), "svc", tt.args, func(k string) string { return tt.env[k] }, &out, &cfg, &cfg.Log,
				func(_ context.Context, log *slog.Logger, reg *prometheus.Registry) error {
					if log == nil || reg == nil {
						t.Error("run got no logger or registry")
					}
					ran = cfg.Name
					return tt.runErr
				})
			if code != tt.wantCode || !strings.Contains(out.String(), tt.wantOut) || ran != tt.wantRan {
				t.Fatalf("code %d ran %q output %q; want code %d ran %q output containing %q", code, ran, out.String(), tt.wantCode, tt.wantRan, tt.wantOut)
			}
		})
	}
}
