package notifier

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"strings"
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
	// DedupTTL is how long a posted threat's id is remembered: the ledger
	// bucket's TTL when this notifier creates it.
	DedupTTL time.Duration
	// JSONWebhookURL receives every threat as a JSON document.
	JSONWebhookURL string
	// KibanaURL, when set, makes messages link to their threats in Kibana.
	KibanaURL string
	// Routes is the path of the routes file (see package route).
	Routes string
	// Window groups the threats of one rule on one container.
	Window time.Duration
	// Budget is how many messages a destination gets a minute before the
	// rest go into digests; DigestEvery is how often a digest is posted.
	Budget      int
	DigestEvery time.Duration
	// MaxAge is how old a threat may be and still be posted one by one, and
	// how far back a new consumer starts.
	MaxAge time.Duration
	// AckWait is the consumers' ack deadline.
	AckWait time.Duration
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
	fs.DurationVar(&c.DedupTTL, "dedup-ttl", 24*time.Hour, "how long a posted threat's id is remembered so that a redelivery is not posted again; applied when the notifier creates the ledger bucket (change an existing one with nats kv edit)")
	fs.StringVar(&c.JSONWebhookURL, "json-webhook-url", "", "secret: URL that receives every threat as a JSON document (POST), e.g. a SIEM or automation endpoint")
	fs.StringVar(&c.KibanaURL, "kibana-url", "", "Kibana base URL (https://kibana.example.com); messages then link to their threats in Discover")
	fs.StringVar(&c.Routes, "notify-routes", "", "YAML file routing threats to destinations by severity, rule tag, image or label, with a minimum severity per destination (empty: every threat to every destination)")
	fs.DurationVar(&c.Window, "notify-window", time.Minute, "threats of one rule on one container within this window become one message with a count")
	fs.IntVar(&c.Budget, "notify-budget", 20, "messages a minute per Slack destination; beyond it, low and medium threats go into digests (high and critical are always posted)")
	fs.DurationVar(&c.DigestEvery, "notify-digest-interval", 30*time.Second, "how often the digest of threats over the budget is posted")
	fs.DurationVar(&c.MaxAge, "notify-max-age", 15*time.Minute, "threats older than this are not posted one by one but counted in a digest; a new consumer starts this far back")
	fs.DurationVar(&c.AckWait, "notify-ack-wait", 5*time.Second, "ack deadline of the threats consumers; a crashed replica's prefetched threats go to another after it")
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
	if s.WebhookURL == "" && s.BotToken == "" && !c.Console && c.JSONWebhookURL == "" {
		errs = append(errs, errors.New("no alert destination: set SLACK_WEBHOOK_URL, or SLACK_BOT_TOKEN and SLACK_CHANNEL, or JSON_WEBHOOK_URL, or CONSOLE=true (or the flags -slack-webhook-url, -slack-bot-token and -slack-channel, -json-webhook-url, -console)"))
	}
	if c.DedupTTL <= 0 {
		errs = append(errs, errors.New("dedup-ttl must be positive"))
	}
	if c.JSONWebhookURL != "" {
		if err := checkURL(c.JSONWebhookURL); err != nil {
			errs = append(errs, fmt.Errorf("json-webhook-url: %w", err))
		}
	}
	if c.KibanaURL != "" {
		if err := checkURL(c.KibanaURL); err != nil || strings.ContainsAny(c.KibanaURL, "|<> \"'") {
			errs = append(errs, fmt.Errorf("kibana-url %q: want an absolute http(s) URL without | < > quotes or spaces", c.KibanaURL))
		}
	}
	if c.Window < 0 {
		errs = append(errs, errors.New("notify-window must not be negative"))
	}
	if c.Budget < 0 {
		errs = append(errs, errors.New("notify-budget must not be negative (0: no budget)"))
	}
	if c.DigestEvery <= 0 {
		errs = append(errs, errors.New("notify-digest-interval must be positive"))
	}
	if c.MaxAge <= 0 {
		errs = append(errs, errors.New("notify-max-age must be positive"))
	}
	if c.AckWait < time.Second {
		errs = append(errs, errors.New("notify-ack-wait must be at least 1s"))
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
