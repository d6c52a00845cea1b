package indexer

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/whalewatch/whalewatch/pkg/admin"
	"github.com/whalewatch/whalewatch/pkg/bus"
)

// Config is the indexer's configuration.
type Config struct {
	NATS          bus.Config
	Admin         admin.Config
	Log           admin.LogConfig
	Elasticsearch ESConfig
	// BatchSize is the most events pulled from JetStream at once, per consumer.
	BatchSize int
	// Workers is how many batches are written to Elasticsearch in parallel.
	Workers int
	// Retention is how long each kind of data stream keeps documents.
	Retention RetentionConfig
	// FlushInterval is how long a batch may wait to fill.
	FlushInterval time.Duration
	// IndexTelemetry turns the telemetry consumer on; threats are always indexed.
	IndexTelemetry bool
	// AckWait is how long JetStream waits for an ack before it redelivers a
	// message: how soon the events in flight of a crashed indexer are
	// indexed by another (or by itself, restarted), and how long an event
	// waits that a dying consumer leader sent but the indexer never got.
	// Events the indexer holds get in-progress acks (pkg/bus), so a slow
	// Elasticsearch never causes a redelivery.
	AckWait time.Duration
	// RetryMaxBackoff caps the redelivery delay of events Elasticsearch did
	// not take: after an outage, indexing resumes within this delay.
	RetryMaxBackoff time.Duration
}

// ESConfig is how the indexer reaches Elasticsearch.
type ESConfig struct {
	URLs      string // comma-separated
	APIKey    string
	Username  string
	Password  string
	CACert    string // path to a PEM file
	Namespace string
	Timeout   time.Duration
	// MaxBulkBytes bounds the bytes pulled at once and splits a batch into
	// several bulk requests above this size.
	MaxBulkBytes int
	// Gzip compresses bulk request bodies.
	Gzip bool
}

// RetentionConfig is how long Elasticsearch keeps each kind of document:
// the delete phase of the data stream's ILM policy. Zero keeps for ever.
type RetentionConfig struct {
	Threats, Response, Telemetry time.Duration
}

// RegisterFlags registers the retention flags on fs.
func (c *RetentionConfig) RegisterFlags(fs *flag.FlagSet) {
	fs.DurationVar(&c.Threats, "retention-threats", 365*24*time.Hour, "how long Elasticsearch keeps threats (ILM delete phase; 0: for ever)")
	fs.DurationVar(&c.Response, "retention-response", 365*24*time.Hour, "how long Elasticsearch keeps response requests and results (0: for ever)")
	fs.DurationVar(&c.Telemetry, "retention-telemetry", 14*24*time.Hour, "how long Elasticsearch keeps telemetry (0: for ever)")
}

// Validate checks c.
func (c *RetentionConfig) Validate() error {
	for name, d := range map[string]time.Duration{"threats": c.Threats, "response": c.Response, "telemetry": c.Telemetry} {
		if d != 0 && d < time.Hour {
			return fmt.Errorf("retention-%s must be 0 (for ever) or at least 1h", name)
		}
	}
	return nil
}

// RegisterFlags registers the indexer's flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	c.NATS.RegisterFlags(fs)
	c.Admin.RegisterFlags(fs, "127.0.0.1:9103")
	c.Log.RegisterFlags(fs)
	c.Elasticsearch.RegisterFlags(fs)
	c.Retention.RegisterFlags(fs)
	fs.IntVar(&c.BatchSize, "batch-size", 1000, "most events pulled from JetStream at once, per consumer")
	fs.IntVar(&c.Workers, "workers", 4, "batches written to Elasticsearch in parallel")
	fs.DurationVar(&c.FlushInterval, "flush-interval", 200*time.Millisecond, "how long a batch may wait to fill before it is written")
	fs.BoolVar(&c.IndexTelemetry, "index-telemetry", true, "index telemetry as well as threats (threats are always indexed)")
	fs.DurationVar(&c.AckWait, "ack-wait", 5*time.Second, "how long JetStream waits for an ack before redelivering: how long events in flight of a crashed indexer, or sent by a NATS node that died, wait (events being written get in-progress acks, however slow Elasticsearch is)")
	fs.DurationVar(&c.RetryMaxBackoff, "retry-max-backoff", 30*time.Second, "cap of the delay before events Elasticsearch did not take are tried again")
}

// RegisterFlags registers the Elasticsearch flags on fs.
func (c *ESConfig) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.URLs, "elasticsearch-url", "", "Elasticsearch URL(s), comma-separated, e.g. http://127.0.0.1:9200 (required)")
	fs.StringVar(&c.APIKey, "elasticsearch-api-key", "", "secret: Elasticsearch API key (the base64 \"encoded\" value); instead of username and password")
	fs.StringVar(&c.Username, "elasticsearch-username", "", "Elasticsearch user for basic authentication")
	fs.StringVar(&c.Password, "elasticsearch-password", "", "secret: password of elasticsearch-username")
	fs.StringVar(&c.CACert, "elasticsearch-ca-cert", "", "path to a PEM file of the CA(s) that signed Elasticsearch's certificate (default: system roots)")
	fs.StringVar(&c.Namespace, "elasticsearch-namespace", "default", "data stream namespace: documents go to logs-whalewatch.<dataset>-<namespace>")
	fs.DurationVar(&c.Timeout, "elasticsearch-timeout", 10*time.Second, "timeout of one Elasticsearch request, retries included")
	fs.IntVar(&c.MaxBulkBytes, "bulk-max-bytes", 10<<20, "most bytes pulled from JetStream at once; a batch is split into bulk requests of at most this many bytes")
	fs.BoolVar(&c.Gzip, "bulk-gzip", false, "gzip bulk request bodies (less network, more CPU)")
}

// Validate checks c.
func (c *Config) Validate() error {
	var errs []error
	if c.BatchSize < 1 || c.BatchSize > 10000 {
		errs = append(errs, errors.New("batch-size must be between 1 and 10000"))
	}
	if c.Workers < 1 || c.Workers > 64 {
		errs = append(errs, errors.New("workers must be between 1 and 64"))
	}
	if c.FlushInterval < 0 {
		errs = append(errs, errors.New("flush-interval must not be negative"))
	}
	if c.AckWait < time.Second {
		errs = append(errs, errors.New("ack-wait must be at least 1s (in-progress acks are sent every third of it)"))
	}
	if c.RetryMaxBackoff < time.Second {
		errs = append(errs, errors.New("retry-max-backoff must be at least 1s"))
	}
	return errors.Join(append(errs, c.Elasticsearch.Validate(), c.Retention.Validate(), c.NATS.Validate(), c.Admin.Validate(), c.Log.Validate())...)
}

// Validate checks c. Its errors never include a secret.
func (c *ESConfig) Validate() error {
	var errs []error
	urls := c.Addresses()
	if len(urls) == 0 {
		errs = append(errs, errors.New("elasticsearch-url (ELASTICSEARCH_URL) is required, e.g. http://127.0.0.1:9200"))
	}
	for _, u := range urls {
		p, err := url.Parse(u)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			errs = append(errs, fmt.Errorf("elasticsearch-url %q: want http(s)://host:port", redactURL(u)))
		}
	}
	if c.APIKey != "" && (c.Username != "" || c.Password != "") {
		errs = append(errs, errors.New("set elasticsearch-api-key or elasticsearch-username/-password, not both"))
	}
	if c.Password != "" && c.Username == "" {
		errs = append(errs, errors.New("elasticsearch-password is set but elasticsearch-username is not"))
	}
	if err := validNamespace(c.Namespace); err != nil {
		errs = append(errs, err)
	}
	if c.Timeout <= 0 {
		errs = append(errs, errors.New("elasticsearch-timeout must be positive"))
	}
	if c.MaxBulkBytes < 64<<10 {
		errs = append(errs, errors.New("bulk-max-bytes must be at least 65536"))
	}
	return errors.Join(errs...)
}

// Addresses splits URLs into its non-empty elements.
func (c *ESConfig) Addresses() []string {
	var out []string
	for _, u := range strings.Split(c.URLs, ",") {
		if u = strings.TrimSpace(u); u != "" {
			out = append(out, u)
		}
	}
	return out
}

// validNamespace applies Elasticsearch's data stream naming rules to the
// namespace part: lowercase, no '-', none of the characters index names
// forbid, at most 100 bytes.
func validNamespace(ns string) error {
	switch {
	case ns == "":
		return errors.New("elasticsearch-namespace is required")
	case len(ns) > 100:
		return errors.New("elasticsearch-namespace must be at most 100 bytes")
	case ns != strings.ToLower(ns):
		return fmt.Errorf("elasticsearch-namespace %q must be lowercase", ns)
	case strings.ContainsAny(ns, "-\\/*?\"<>| ,#:"):
		return fmt.Errorf("elasticsearch-namespace %q must not contain '-' nor any of \\/*?\"<>| ,#:", ns)
	}
	return nil
}

// redactURL hides a password embedded in a URL.
func redactURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(unparsable URL)"
	}
	return p.Redacted()
}
