package detector

import (
	"errors"
	"flag"

	"github.com/whalewatch/whalewatch/pkg/admin"
	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/services/detector/internal/partition"
	"github.com/whalewatch/whalewatch/services/detector/internal/requester"
	"github.com/whalewatch/whalewatch/services/detector/internal/rules"
	"github.com/whalewatch/whalewatch/services/detector/internal/state"
)

// Config is the detector's configuration.
type Config struct {
	NATS  bus.Config
	Admin admin.Config
	Log   admin.LogConfig
	// Durable is the name of the telemetry consumer; replicas share it.
	Durable string
	// State bounds the per-container windows and per-image baselines.
	State state.Config
	// Partition shares telemetry among replicas by container.
	Partition partition.Config
	// Response maps threats to response requests (off by default).
	Response requester.Config
	// Rules names the user's rule files and how they are reloaded.
	Rules rules.Config
}

// RegisterFlags registers the detector's flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	c.NATS.RegisterFlags(fs)
	c.Admin.RegisterFlags(fs, "127.0.0.1:9102")
	c.Log.RegisterFlags(fs)
	fs.StringVar(&c.Durable, "consumer", "detector", "durable consumer name on the telemetry stream")
	c.State.RegisterFlags(fs)
	c.Partition.RegisterFlags(fs)
	c.Response.RegisterFlags(fs)
	c.Rules.RegisterFlags(fs)
}

// Validate checks c.
func (c *Config) Validate() error {
	if c.Durable == "" {
		return errors.New("consumer name is required")
	}
	return errors.Join(c.NATS.Validate(), c.Admin.Validate(), c.Log.Validate(),
		c.State.Validate(), c.Partition.Validate(), c.Response.Validate(), c.Rules.Validate())
}
