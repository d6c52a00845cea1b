package notifier

import (
	"bytes"
	"flag"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/slack-go/slack"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/flagenv"
)

const secretWebhook = "https://hooks.slack.com/services/T0SECRET/B0SECRET/xyzSECRETxyz"

// parse parses args and env into a fresh Config, as main does.
func parse(t *testing.T, args []string, env map[string]string) (Config, error) {
	t.Helper()
	var cfg Config
	fs := flag.NewFlagSet("notifier", flag.ContinueOnError)
	fs.SetOutput(new(bytes.Buffer))
	cfg.RegisterFlags(fs)
	err := flagenv.Parse(fs, args, func(k string) string { return env[k] })
	return cfg, err
}

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	cfg, err := parse(t, nil, map[string]string{"CONSOLE": "true"})
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	require.Equal(t, "127.0.0.1:9104", cfg.Admin.Addr)
	require.Equal(t, "notifier", cfg.Durable)
	require.Equal(t, event.SeverityLow, cfg.MinSeverity)
	require.Equal(t, slack.APIURL, cfg.Slack.APIURL)
	require.Equal(t, 10*time.Second, cfg.Slack.Timeout)
	require.Equal(t, 24*time.Hour, cfg.DedupTTL)
	require.True(t, cfg.Console)
}

func TestConfigFromEnv(t *testing.T) {
	t.Parallel()
	cfg, err := parse(t, []string{"-min-severity", "critical"}, map[string]string{
		"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_CHANNEL": "C1", "SLACK_API_URL": "http://127.0.0.1:1/api/",
		"MIN_SEVERITY": "medium", "CONSUMER": "notifier-b", "HTTP_ADDR": "127.0.0.1:0",
	})
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	require.Equal(t, event.SeverityCritical, cfg.MinSeverity, "the flag wins over the environment")
	require.Equal(t, "xoxb-1", cfg.Slack.BotToken)
	require.Equal(t, "C1", cfg.Slack.Channel)
	require.Equal(t, "notifier-b", cfg.Durable)
}

func TestConfigInvalid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string
	}{
		{"nothing to post to", nil, nil, "no alert destination: set SLACK_WEBHOOK_URL, or SLACK_BOT_TOKEN and SLACK_CHANNEL, or JSON_WEBHOOK_URL, or CONSOLE=true"},
		{"bot token without channel", nil, map[string]string{"SLACK_BOT_TOKEN": "xoxb-1"}, "slack-bot-token needs slack-channel"},
		{"channel without bot token", nil, map[string]string{"SLACK_CHANNEL": "C1", "CONSOLE": "1"}, "slack-channel is only used with slack-bot-token"},
		{"json webhook not a URL", nil, map[string]string{"JSON_WEBHOOK_URL": "siem/SECRET"}, "json-webhook-url: want an absolute https:// URL"},
		{"kibana url with a pipe", []string{"-console", "-kibana-url", "https://k|x"}, nil, "kibana-url"},
		{"budget", []string{"-console", "-notify-budget", "-1"}, nil, "notify-budget must not be negative"},
		{"window", []string{"-console", "-notify-window", "-1s"}, nil, "notify-window must not be negative"},
		{"digest", []string{"-console", "-notify-digest-interval", "0s"}, nil, "notify-digest-interval must be positive"},
		{"max age", []string{"-console", "-notify-max-age", "0s"}, nil, "notify-max-age must be positive"},
		{"ack wait", []string{"-console", "-notify-ack-wait", "100ms"}, nil, "notify-ack-wait must be at least 1s"},
		{"webhook not a URL", nil, map[string]string{"SLACK_WEBHOOK_URL": "hooks.slack.com/services/T0SECRET"}, "slack-webhook-url: want an absolute https:// URL"},
		{"api url", []string{"-console", "-slack-api-url", "ftp://x/"}, nil, "slack-api-url"},
		{"timeout", []string{"-console", "-slack-timeout", "0s"}, nil, "slack-timeout must be positive"},
		{"dedup ttl", []string{"-console", "-dedup-ttl", "0s"}, nil, "dedup-ttl must be positive"},
		{"consumer", []string{"-console", "-consumer", ""}, nil, "consumer name is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := parse(t, tt.args, tt.env)
			require.NoError(t, err)
			err = cfg.Validate()
			require.ErrorContains(t, err, tt.wantErr)
			require.NotContains(t, err.Error(), "SECRET", "a secret leaked into an error")
		})
	}
}

func TestConfigMinSeverityParse(t *testing.T) {
	t.Parallel()
	_, err := parse(t, []string{"-min-severity", "urgent"}, nil)
	require.ErrorContains(t, err, `unknown severity "urgent"`)
	_, err = parse(t, nil, map[string]string{"MIN_SEVERITY": "urgent"})
	require.ErrorContains(t, err, "environment variable MIN_SEVERITY")
}

// TestREADMEFlagTable keeps the README's table of flags and environment
// variables equal to what the code registers. Regenerate it with
//
//	go test ./internal/notifier -run TestREADMEFlagTable -update
func TestREADMEFlagTable(t *testing.T) {
	var cfg Config
	fs := flag.NewFlagSet("notifier", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	var table strings.Builder
	require.NoError(t, flagenv.WriteMarkdown(&table, fs))

	const path = "../../README.md"
	const begin, end = "<!-- flags:begin -->\n", "<!-- flags:end -->"
	readme, err := os.ReadFile(path)
	require.NoError(t, err)
	before, rest, ok := strings.Cut(string(readme), begin)
	require.True(t, ok, "README.md lacks %q", begin)
	_, after, ok := strings.Cut(rest, end)
	require.True(t, ok, "README.md lacks %q", end)
	want := before + begin + table.String() + end + after
	if *update {
		require.NoError(t, os.WriteFile(path, []byte(want), 0o644))
		return
	}
	require.Equal(t, want, string(readme), "README.md flag table is stale: run go test ./internal/notifier -run TestREADMEFlagTable -update")
}

var update = flag.Bool("update", false, "rewrite the README's flag table")
