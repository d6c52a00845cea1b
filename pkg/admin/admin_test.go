package admin

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestServerEndpointsAndShutdown(t *testing.T) {
	t.Parallel()
	reg := NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "whalewatch_test_total", Help: "x"})
	reg.MustRegister(c)
	c.Inc()
	s := New(Config{Addr: "127.0.0.1:0", ShutdownTimeout: 5 * time.Second}, reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	var failing atomic.Bool
	failing.Store(true)
	s.AddCheck("nats", func(context.Context) error {
		if failing.Load() {
			return errors.New("NATS RECONNECTING")
		}
		return nil
	})

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for s.Addr() == "" {
		if time.Now().After(deadline) {
			t.Fatal("server did not listen")
		}
		time.Sleep(5 * time.Millisecond)
	}
	base := "http://" + s.Addr()

	if code, _ := get(t, base+"/healthz"); code != http.StatusOK {
		t.Fatalf("healthz %d", code)
	}
	code, body := get(t, base+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "nats: NATS RECONNECTING") {
		t.Fatalf("readyz with a failing check: %d %q", code, body)
	}
	failing.Store(false)
	if code, _ := get(t, base+"/readyz"); code != http.StatusOK {
		t.Fatalf("readyz with passing checks: %d", code)
	}
	if code, body := get(t, base+"/metrics"); code != http.StatusOK || !strings.Contains(body, "whalewatch_test_total 1") || !strings.Contains(body, "go_goroutines") {
		t.Fatalf("metrics %d:\n%s", code, body)
	}
	s.SetStopping()
	if code, _ := get(t, base+"/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("readyz while stopping: %d", code)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		cfg     Config
		wantErr string
	}{
		{Config{Addr: "127.0.0.1:9101", ShutdownTimeout: time.Second}, ""},
		{Config{Addr: "", ShutdownTimeout: time.Second}, ""},
		{Config{Addr: "nonsense", ShutdownTimeout: time.Second}, "http-addr"},
		{Config{Addr: ":1", ShutdownTimeout: 0}, "shutdown-timeout"},
	}
	for _, tt := range tests {
		err := tt.cfg.Validate()
		if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("%+v: error %v, want %q", tt.cfg, err, tt.wantErr)
		}
	}
	for _, lc := range []LogConfig{{"debug", "json"}, {"warn", "text"}} {
		if err := lc.Validate(); err != nil {
			t.Errorf("%+v: %v", lc, err)
		}
	}
	for _, lc := range []LogConfig{{"loud", "json"}, {"info", "xml"}} {
		if err := lc.Validate(); err == nil {
			t.Errorf("%+v accepted", lc)
		}
	}
}

func TestLoggerEscapesHostileValues(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	lc := LogConfig{Level: "info", Format: "text"}
	lc.NewLogger(&b, "test").Info("process", "command_line", "nc -l\nlevel=ERROR msg=forged")
	if strings.Count(b.String(), "\n") != 1 {
		t.Fatalf("a hostile value split the log line: %q", b.String())
	}
}
