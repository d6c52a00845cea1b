package bus

import (
	"errors"
	"flag"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/whalewatch/whalewatch/pkg/event"
)

func TestBackoff(t *testing.T) {
	t.Parallel()
	tests := []struct {
		n    uint64
		want time.Duration
	}{
		{0, 500 * time.Millisecond},
		{1, 500 * time.Millisecond},
		{2, time.Second},
		{3, 2 * time.Second},
		{7, 30 * time.Second},
		{1000, 30 * time.Second},
	}
	for _, tt := range tests {
		if got := Backoff(tt.n, 30*time.Second); got != tt.want {
			t.Errorf("Backoff(%d) = %v, want %v", tt.n, got, tt.want)
		}
	}
}

func TestPermanent(t *testing.T) {
	t.Parallel()
	if IsPermanent(errors.New("timeout")) {
		t.Fatal("plain error is permanent")
	}
	if !IsPermanent(Permanent(errors.New("400"))) || !IsPermanent(event.ErrInvalid) {
		t.Fatal("permanent errors not recognised")
	}
	if Permanent(nil) != nil {
		t.Fatal("Permanent(nil) != nil")
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args    []string
		wantErr string
	}{
		{nil, ""},
		{[]string{"-nats-url="}, "nats-url is required"},
		{[]string{"-stream-replicas=0"}, "stream-replicas"},
		{[]string{"-stream-threats-max-bytes=-2"}, "stream-threats-max-bytes"},
		{[]string{"-stream-actions-max-age=-1h"}, "stream-actions-max-age"},
		{[]string{"-stream-duplicates=0s"}, "stream-duplicates"},
		{[]string{"-nats-nkey-file=/s/detector.nk", "-nats-inbox-prefix=_INBOX_detector"}, ""},
		{[]string{"-nats-nkey-file=a.nk", "-nats-creds=a.creds"}, "exclusive"},
		{[]string{"-nats-inbox-prefix=_INBOX.detector"}, "one subject token"},
		{[]string{"-nats-inbox-prefix=_INBOX_>"}, "one subject token"},
		{[]string{"-nats-inbox-prefix="}, "one subject token"},
		{[]string{"-nats-tls-ca=ca.pem", "-nats-tls-cert=c.pem", "-nats-tls-key=c.key"}, ""},
		{[]string{"-nats-tls-cert=c.pem"}, "go together"},
		{[]string{"-nats-tls-key=c.key"}, "go together"},
	}
	for _, tt := range tests {
		var c Config
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		c.RegisterFlags(fs)
		if err := fs.Parse(tt.args); err != nil {
			t.Fatal(err)
		}
		err := c.Validate()
		if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("%v: error %v, want %q", tt.args, err, tt.wantErr)
		}
	}
}

func TestSpecsCoverEverySubjectTree(t *testing.T) {
	t.Parallel()
	var c Config
	c.RegisterFlags(flag.NewFlagSet("t", flag.ContinueOnError))
	seen := map[string]bool{}
	for _, s := range c.Streams.Specs() {
		if s.Duplicates != 2*time.Minute || s.Replicas != 1 || len(s.Subjects) != 1 {
			t.Errorf("stream %s: %+v", s.Name, s)
		}
		seen[s.Subjects[0]] = true
	}
	for _, want := range []string{"whalewatch.telemetry.>", "whalewatch.threats.>", "whalewatch.actions.>", "whalewatch.deadletter.>"} {
		if !seen[want] {
			t.Errorf("no stream for %s", want)
		}
	}
}

func TestConnectNamesAnUnreadableSeed(t *testing.T) {
	t.Parallel()
	var c Config
	c.RegisterFlags(flag.NewFlagSet("t", flag.ContinueOnError))
	c.NKeyFile = t.TempDir() + "/missing.nk"
	_, err := Connect(c, "test", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err == nil || !strings.Contains(err.Error(), "missing.nk") {
		t.Fatalf("error %v, want one naming the seed file", err)
	}
}

// syncBuffer is a log sink the client's callback goroutine and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestConnectNamesURLAndCause(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now: connection refused
	var logs syncBuffer
	cfg := Config{URL: "nats://user:hunter2@" + addr}
	nc, err := Connect(cfg, "test", slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	want := "NATS at nats://user:xxxxx@" + addr + ": connect: connection refused"
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in logs:\n%s", want, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if strings.Contains(logs.String(), "hunter2") {
		t.Fatalf("password in logs:\n%s", logs.String())
	}
}

func TestRedactURLs(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"nats://nats:4222", "nats://nats:4222"},
		{"nats://u:p@a:4222, nats://b:4222", "nats://u:xxxxx@a:4222,nats://b:4222"},
		{"nats://s3cr3t-token@a:4222", "nats://xxxxx@a:4222"},
	}
	for _, tt := range tests {
		if got := RedactURLs(tt.in); got != tt.want {
			t.Errorf("RedactURLs(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
