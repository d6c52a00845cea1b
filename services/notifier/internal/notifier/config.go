package notifier

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"time"

	"github.com/slack-go/slack"

	"github.com/whalewatch/whalewatch/pkg/admin"
	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
)

// Config is the notifier's configuration.
type Config struct {
	NATS  bus.Config
	Admin admin.Config
	Log   admin.LogConfig
	// Durable is the name of the threats consumer; replicas share it.
	Durable string
	// MinSeverity is the least severe threat that is posted.
	MinSeverity event.Severity
	Slack       SlackConfig
	// Console also prints each alert as one line on standard output.
	Console bool
	// DedupTTL is how long a posted threat's id is remembered.
	DedupTTL time.Duration
}

// SlackConfig says where alerts go in Slack: an incoming webhook, or the Web
// API's chat.postMessage with a bot token and a channel.
type SlackConfig struct {
	WebhookURL string
	BotToken   string
	Channel    string
	APIURL     string
	Timeout    time.Duration
}

// RegisterFlags registers the notifier's flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	c.NATS.RegisterFlags(fs)
	c.Admin.RegisterFlags(fs, "127.0.0.1:9104")
	c.Log.RegisterFlags(fs)
	fs.StringVar(&c.Durable, "consumer", "notifier", "durable consumer name on the threats stream")
	c.MinSeverity = event.SeverityLow
	fs.Var(severityFlag{&c.MinSeverity}, "min-severity", "least severe threat to post: low, medium, high or critical")
	fs.StringVar(&c.Slack.WebhookURL, "slack-webhook-url", "", "secret: Slack incoming webhook URL (https://hooks.slack.com/services/...)")
	fs.StringVar(&c.Slack.BotToken, "slack-bot-token", "", "secret: Slack bot token (xoxb-...) with the chat:write scope, to post with chat.postMessage instead of a webhook")
	fs.StringVar(&c.Slack.Channel, "slack-channel", "", "channel ID (C...) or name the bot posts to; required with slack-bot-token")
	fs.StringVar(&c.Slack.APIURL, "slack-api-url", slack.APIURL, "Slack Web API base URL")
	fs.DurationVar(&c.Slack.Timeout, "slack-timeout", 10*time.Second, "timeout of one request to Slack")
	fs.BoolVar(&c.Console, "console", false, "also print each alert as one line on standard output")
	fs.DurationVar(&c.DedupTTL, "dedup-ttl", 24*time.Hour, "how long a posted threat's id is remembered so that a redelivery is not posted again")
}

// severityFlag is a flag.Value that accepts only the four severity labels.
type severityFlag struct{ p *event.Severity }

func (f severityFlag) String() string {
	if f.p == nil {
		return ""
	}
	return string(*f.p)
}

func (f severityFlag) Set(s string) error {
	sev, err := event.ParseSeverity(s)
	if err != nil {
		return err
	}
	*f.p = sev
	return nil
}

// Validate checks c. Messages never repeat a secret's value.
func (c *Config) Validate() error {
	var errs []error
	if c.Durable == "" {
		errs = append(errs, errors.New("consumer name is required"))
	}
	if !c.MinSeverity.Valid() {
		errs = append(errs, fmt.Errorf("min-severity %q: want low, medium, high or critical", c.MinSeverity))
	}
	s := c.Slack
	if s.WebhookURL != "" {
		if err := checkURL(s.WebhookURL); err != nil {
			errs = append(errs, fmt.Errorf("slack-webhook-url: %w", err)) // err does not quote the URL
		}
		if s.BotToken != "" {
			errs = append(errs, errors.New("set slack-webhook-url or slack-bot-token, not both: each alert would be posted twice"))
		}
	}
	if s.BotToken != "" && s.Channel == "" {
		errs = append(errs, errors.New("slack-bot-token needs slack-channel (SLACK_CHANNEL): the channel ID or name to post to"))
	}
	if s.Channel != "" && s.BotToken == "" {
		errs = append(errs, errors.New("slack-channel is only used with slack-bot-token (SLACK_BOT_TOKEN); an incoming webhook posts to the channel it was created for"))
	}
	if err := checkURL(s.APIURL); err != nil {
		errs = append(errs, fmt.Errorf("slack-api-url %q: %w", s.APIURL, err))
	}
	if s.Timeout <= 0 {
		errs = append(errs, errors.New("slack-timeout must be positive"))
	}
	if s.WebhookURL == "" && s.BotToken == "" && !c.Console {
		errs = append(errs, errors.New("no alert destination: set SLACK_WEBHOOK_URL, or SLACK_BOT_TOKEN and SLACK_CHANNEL, or CONSOLE=true (or the flags -slack-webhook-url, -slack-bot-token and -slack-channel, -console)"))
	}
	if c.DedupTTL <= 0 {
		errs = append(errs, errors.New("dedup-ttl must be positive"))
	}
	errs = append(errs, c.NATS.Validate(), c.Admin.Validate(), c.Log.Validate())
	return errors.Join(errs...)
}

// checkURL checks that raw is an absolute http(s) URL, without quoting it.
func checkURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return errors.New("not a URL")
	}
	if (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return errors.New("want an absolute https:// URL")
	}
	return nil
}
