package detector

import (
	"errors"
	"flag"
	"time"

	"github.com/whalewatch/whalewatch/pkg/admin"
	"github.com/whalewatch/whalewatch/pkg/bus"
)

// Config is the detector's configuration.
type Config struct {
	NATS  bus.Config
	Admin admin.Config
	Log   admin.LogConfig
	// Durable is the name of the telemetry consumer; replicas share it.
	Durable string
	// DedupWindow suppresses a second threat for the same rule, container and
	// command line within the window (the same exec seen by docker events and
	// by process polling).
	DedupWindow time.Duration
}

// RegisterFlags registers the detector's flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	c.NATS.RegisterFlags(fs)
	c.Admin.RegisterFlags(fs, "127.0.0.1:9102")
	c.Log.RegisterFlags(fs)
	fs.StringVar(&c.Durable, "consumer", "detector", "durable consumer name on the telemetry stream")
	fs.DurationVar(&c.DedupWindow, "dedup-window", time.Minute, "window in which a repeated threat (same rule, container, command line) is raised once")
}

// Validate checks c.
func (c *Config) Validate() error {
	if c.Durable == "" {
		return errors.New("consumer name is required")
	}
	if c.DedupWindow < 0 {
		return errors.New("dedup-window must not be negative")
	}
	return errors.Join(c.NATS.Validate(), c.Admin.Validate(), c.Log.Validate())
}
