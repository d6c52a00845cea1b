package flagenv

import (
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantURL string
		wantInt time.Duration
		wantErr string
	}{
		{name: "defaults", wantURL: "nats://127.0.0.1:4222", wantInt: time.Second},
		{name: "env", env: map[string]string{"NATS_URL": "nats://a:1", "POLL_INTERVAL": "250ms"}, wantURL: "nats://a:1", wantInt: 250 * time.Millisecond},
		{name: "flag wins", args: []string{"-nats-url", "nats://flag:1"}, env: map[string]string{"NATS_URL": "nats://env:1"}, wantURL: "nats://flag:1", wantInt: time.Second},
		{name: "bad env", env: map[string]string{"POLL_INTERVAL": "soon"}, wantErr: "environment variable POLL_INTERVAL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fs := flag.NewFlagSet("x", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			url := fs.String("nats-url", "nats://127.0.0.1:4222", "NATS URL")
			iv := fs.Duration("poll-interval", time.Second, "how often")
			err := Parse(fs, tt.args, func(k string) string { return tt.env[k] })
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if *url != tt.wantURL || *iv != tt.wantInt {
				t.Fatalf("got %q %v, want %q %v", *url, *iv, tt.wantURL, tt.wantInt)
			}
		})
	}
}

func TestWriteMarkdown(t *testing.T) {
	t.Parallel()
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.String("slack-webhook-url", "", "Slack incoming webhook | secret")
	var b strings.Builder
	if err := WriteMarkdown(&b, fs); err != nil {
		t.Fatal(err)
	}
	want := "| `SLACK_WEBHOOK_URL` | `-slack-webhook-url` |  | Slack incoming webhook \\| secret |"
	if !strings.Contains(b.String(), want) {
		t.Fatalf("table\n%s\nlacks row\n%s", b.String(), want)
	}
}
