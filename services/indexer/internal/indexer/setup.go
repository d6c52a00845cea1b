package indexer

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"time"

	"github.com/whalewatch/whalewatch/pkg/admin"
	"github.com/whalewatch/whalewatch/services/indexer/internal/kibana"
)

// SetupConfig is the configuration of `indexer setup`.
type SetupConfig struct {
	Log           admin.LogConfig
	Elasticsearch ESConfig
	Retention     RetentionConfig
	Kibana        kibana.Config
	// Timeout bounds the whole setup, waiting for Elasticsearch and Kibana
	// to come up included.
	Timeout time.Duration
}

// RegisterFlags registers the setup flags on fs.
func (c *SetupConfig) RegisterFlags(fs *flag.FlagSet) {
	c.Log.RegisterFlags(fs)
	c.Elasticsearch.RegisterFlags(fs)
	c.Retention.RegisterFlags(fs)
	c.Kibana.RegisterFlags(fs)
	fs.DurationVar(&c.Timeout, "setup-timeout", 10*time.Minute, "how long setup may wait for Elasticsearch and Kibana to come up")
}

// Validate checks c.
func (c *SetupConfig) Validate() error {
	var errs []error
	if c.Timeout <= 0 {
		errs = append(errs, errors.New("setup-timeout must be positive"))
	}
	return errors.Join(append(errs, c.Log.Validate(), c.Elasticsearch.Validate(), c.Retention.Validate(), c.Kibana.Validate())...)
}

// Setup installs what Elasticsearch and Kibana need: the ILM policies and
// templates (as the indexer does at start), then, when a Kibana URL is set,
// the saved objects (data views, saved searches, visualisations, the
// dashboard) with overwrite, so that running it again, or after an upgrade,
// replaces them. It waits, retrying, for each to come up; objects Kibana
// refuses fail it at once.
func Setup(ctx context.Context, cfg SetupConfig, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	client, err := NewClient(cfg.Elasticsearch)
	if err != nil {
		return err
	}
	last := errors.New("no answer")
	if err := InstallTemplatesRetry(ctx, client, cfg.Retention, func(err error) {
		last = err
		log.Warn("installing Elasticsearch templates, will retry", "err", err)
	}); err != nil {
		return fmt.Errorf("elasticsearch did not take the templates within %s: %w", cfg.Timeout, last)
	}
	log.Info("Elasticsearch ILM policies and templates installed", "index_templates", IndexTemplates(),
		"policies", LifecyclePolicies())
	if cfg.Kibana.URL == "" {
		log.Info("no kibana-url: Kibana saved objects not installed")
		return nil
	}
	kc, err := kibana.NewClient(cfg.Kibana)
	if err != nil {
		return err
	}
	var res kibana.ImportResult
	var permanent error
	err = retry(ctx, func() error {
		res, err = kc.Import(ctx, "whalewatch.ndjson", kibana.Objects)
		if errors.Is(err, kibana.ErrObjects) {
			permanent = err
			return nil
		}
		return err
	}, func(err error) {
		last = err
		log.Warn("importing Kibana saved objects, will retry", "err", err)
	})
	if err != nil {
		return fmt.Errorf("kibana did not take the saved objects within %s: %w", cfg.Timeout, last)
	}
	if permanent != nil {
		return permanent
	}
	log.Info("Kibana saved objects installed", "objects", res.SuccessCount, "space", cfg.Kibana.Space)
	return nil
}
