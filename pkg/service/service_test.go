package service

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
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
			code := run1(context.Background(), "svc", tt.args, Env{Stdout: &out, Stderr: &out, Getenv: func(k string) string { return tt.env[k] }}, &cfg, &cfg.Log,
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

func TestCommands(t *testing.T) {
	t.Parallel()
	lint := Command{Name: "lint", Usage: "check the rules", Run: func(_ context.Context, args []string, env Env) int {
		fmt.Fprintf(env.Stdout, "linted %v", args)
		return 3
	}}
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantOut  []string
		wantRun  bool
	}{
		{name: "declared command gets its arguments", args: []string{"lint", "-x", "a.yaml"}, wantCode: 3, wantOut: []string{"linted [-x a.yaml]"}},
		{name: "version", args: []string{"version"}, wantCode: 0, wantOut: []string{"whalewatch svc ", "revision: ", "go: go1."}},
		{name: "--version", args: []string{"--version"}, wantCode: 0, wantOut: []string{"whalewatch svc ", "go: go1."}},
		{name: "-version after flags", args: []string{"-name", "a", "-version"}, wantCode: 0, wantOut: []string{"whalewatch svc "}},
		{name: "version refuses arguments", args: []string{"version", "x"}, wantCode: 2, wantOut: []string{`unexpected argument "x"`}},
		{name: "unknown command", args: []string{"lnt"}, wantCode: 2, wantOut: []string{`unknown command "lnt"`, "healthcheck, lint, version"}},
		{name: "stray argument after flags", args: []string{"-name", "a", "extra"}, wantCode: 2, wantOut: []string{`unexpected argument "extra"`, "healthcheck, lint, version"}},
		{name: "help lists commands and environment names", args: []string{"-h"}, wantCode: 0, wantOut: []string{
			"svc <command>", "lint  ", "check the rules", "healthcheck", "version", "--version",
			"-name string  (NAME)", "a required name", "-log-level string  (LOG_LEVEL)  default \"info\"",
		}},
		{name: "runs the service", args: []string{"-name", "a"}, wantCode: 0, wantRun: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var cfg testConfig
			var out strings.Builder
			ran := false
			code := run1(context.Background(), "svc", tt.args, Env{Stdout: &out, Stderr: &out, Getenv: func(string) string { return "" }}, &cfg, &cfg.Log,
				func(context.Context, *slog.Logger, *prometheus.Registry) error {
					ran = true
					return nil
				}, lint)
			if code != tt.wantCode || ran != tt.wantRun {
				t.Fatalf("code %d ran %v, want %d %v; output:\n%s", code, ran, tt.wantCode, tt.wantRun, out.String())
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}

func TestSub(t *testing.T) {
	t.Parallel()
	var sub testConfig
	var got string
	setup := Sub("setup", "install things", &sub, &sub.Log, func(_ context.Context, log *slog.Logger, _ *prometheus.Registry) error {
		got = sub.Name
		return nil
	})
	var cfg testConfig
	var out strings.Builder
	env := Env{Stdout: &out, Stderr: &out, Getenv: func(k string) string { return map[string]string{"NAME": "from-env"}[k] }}
	noRun := func(context.Context, *slog.Logger, *prometheus.Registry) error { t.Error("service ran"); return nil }
	if code := run1(context.Background(), "svc", []string{"setup"}, env, &cfg, &cfg.Log, noRun, setup); code != 0 || got != "from-env" {
		t.Fatalf("code %d, sub ran with %q; output %s", code, got, out.String())
	}
	if code := run1(context.Background(), "svc", []string{"setup", "x"}, env, &cfg, &cfg.Log, noRun, setup); code != 2 {
		t.Fatalf("stray argument to a sub: code %d; output %s", code, out.String())
	}
}

func TestBuildInfoMetric(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	bi := BuildInfo{Version: "v1.2.3", Revision: "abc", Time: "2026-01-01T00:00:00Z", GoVersion: "go1.26.0"}
	if err := bi.register(reg, "detector"); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 1 || mfs[0].GetName() != "whalewatch_build_info" {
		t.Fatalf("gathered %v, %v", mfs, err)
	}
	m := mfs[0].GetMetric()[0]
	labels := map[string]string{}
	for _, l := range m.GetLabel() {
		labels[l.GetName()] = l.GetValue()
	}
	want := map[string]string{"service": "detector", "version": "v1.2.3", "revision": "abc", "vcs_time": "2026-01-01T00:00:00Z", "modified": "false", "go_version": "go1.26.0"}
	if m.GetGauge().GetValue() != 1 || fmt.Sprint(labels) != fmt.Sprint(want) {
		t.Fatalf("value %v labels %v, want 1 %v", m.GetGauge().GetValue(), labels, want)
	}
	if ReadBuildInfo().GoVersion == "" {
		t.Fatal("no Go version in the binary's build info")
	}
}

type adminConfig struct {
	testConfig
	Admin admin.Config
}

func (c *adminConfig) RegisterFlags(fs *flag.FlagSet) {
	c.testConfig.RegisterFlags(fs)
	c.Admin.RegisterFlags(fs, ":9100")
}

func TestHealthcheck(t *testing.T) {
	t.Parallel()
	ready := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.NotFound(w, r)
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	}))
	t.Cleanup(ready.Close)
	notReady := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "not ready: nats: NATS RECONNECTING", http.StatusServiceUnavailable)
	}))
	t.Cleanup(notReady.Close)
	closed := httptest.NewServer(http.NotFoundHandler())
	closedAddr := closed.Listener.Addr().String()
	closed.Close()
	_, readyPort, _ := net.SplitHostPort(ready.Listener.Addr().String())

	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		wantCode int
		wantOut  string
	}{
		{name: "ready, address from the environment", env: map[string]string{"HTTP_ADDR": ready.Listener.Addr().String()}, wantCode: 0, wantOut: "svc ready"},
		{name: "ready, wildcard address asked on loopback", env: map[string]string{"HTTP_ADDR": ":" + readyPort}, wantCode: 0, wantOut: "svc ready"},
		{name: "ready, address from a flag", args: []string{"-http-addr", ready.Listener.Addr().String()}, wantCode: 0, wantOut: "svc ready"},
		{name: "not ready", env: map[string]string{"HTTP_ADDR": notReady.Listener.Addr().String()}, wantCode: 1, wantOut: "503 Service Unavailable: not ready: nats: NATS RECONNECTING"},
		{name: "nothing listening", env: map[string]string{"HTTP_ADDR": closedAddr}, wantCode: 1, wantOut: "connection refused"},
		{name: "admin endpoint off", args: []string{"-http-addr="}, wantCode: 1, wantOut: "admin endpoint is off"},
		{name: "stray argument", args: []string{"now"}, wantCode: 2, wantOut: `unexpected argument "now"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var cfg adminConfig
			var out strings.Builder
			env := Env{Stdout: &out, Stderr: &out, Getenv: func(k string) string { return tt.env[k] }}
			code := run1(context.Background(), "svc", append([]string{"healthcheck"}, tt.args...), env, &cfg, &cfg.Log,
				func(context.Context, *slog.Logger, *prometheus.Registry) error { t.Error("service ran"); return nil })
			if code != tt.wantCode || !strings.Contains(out.String(), tt.wantOut) {
				t.Fatalf("code %d output %q; want %d and %q", code, out.String(), tt.wantCode, tt.wantOut)
			}
		})
	}
}
