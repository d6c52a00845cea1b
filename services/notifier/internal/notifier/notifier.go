// Package notifier tells people about threats: it consumes the threats
// stream and delivers each threat to its destinations (Slack by incoming
// webhook or Web API, a generic JSON webhook, the console), each with its own
// progress, once across replicas, in severity order, with bursts folded into
// groups and digests.
package notifier

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/whalewatch/whalewatch/pkg/claim"
	"github.com/whalewatch/whalewatch/pkg/service"
	"github.com/whalewatch/whalewatch/services/notifier/internal/gate"
	"github.com/whalewatch/whalewatch/services/notifier/internal/render"
	"github.com/whalewatch/whalewatch/services/notifier/internal/route"
)

// LedgerBucket is the NATS KV bucket of the claims on posted alerts.
const LedgerBucket = "whalewatch_notifier_sent"

// Outcomes of a threat at a destination, the values of
// whalewatch_notifier_alerts_total's outcome label.
const (
	outcomePosted           = "posted"            // posted as an alert
	outcomeDuplicate        = "duplicate"         // the ledger says it was posted before
	outcomeFiltered         = "filtered"          // the routes do not send it here
	outcomeGrouped          = "grouped"           // counted in its rule and container's group
	outcomeDigested         = "digested"          // over the post budget: counted in the digest
	outcomeStale            = "stale"             // older than the maximum age: counted in the digest
	outcomeHeld             = "held"              // the destination is held back; retried later
	outcomeClaimedElsewhere = "claimed_elsewhere" // another replica is posting it; retried later
	outcomeFailed           = "failed"            // transient failure, retried later
	outcomeRateLimited      = "rate_limited"      // the destination asked to slow down; retried later
	outcomeRejected         = "rejected"          // permanent failure, dead-lettered
)

type metrics struct {
	alerts  *prometheus.CounterVec
	posts   *prometheus.CounterVec
	sendDur *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		alerts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whalewatch_notifier_alerts_total",
			Help: "Threats handled, by destination and outcome (posted, duplicate, filtered, grouped, digested, stale, held, claimed_elsewhere, failed, rate_limited, rejected).",
		}, []string{"destination", "outcome"}),
		posts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whalewatch_notifier_posts_total",
			Help: "Messages delivered, by destination and kind (alert, group, digest, update).",
		}, []string{"destination", "kind"}),
		sendDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "whalewatch_notifier_send_seconds",
			Help:    "Time one alert took to deliver, successful or not.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2.5, 8),
		}, []string{"destination"}),
	}
	reg.MustRegister(m.alerts, m.posts, m.sendDur)
	return m
}

// NewSinks builds the destinations cfg configures, in a fixed order.
func NewSinks(cfg Config, stdout io.Writer) ([]Sink, error) {
	o := render.Options{KibanaURL: cfg.KibanaURL}
	var sinks []Sink
	if cfg.Console {
		sinks = append(sinks, NewConsole(stdout))
	}
	if cfg.Slack.WebhookURL != "" {
		sinks = append(sinks, NewWebhook(cfg.Slack.WebhookURL, cfg.Slack.Timeout, o))
	}
	if cfg.Slack.BotToken != "" {
		sinks = append(sinks, NewWebAPI(cfg.Slack.BotToken, cfg.Slack.Channel, cfg.Slack.APIURL, cfg.Slack.Timeout, o))
	}
	if cfg.JSONWebhookURL != "" {
		sinks = append(sinks, NewJSONWebhook(cfg.JSONWebhookURL, cfg.Slack.Timeout))
	}
	if len(sinks) == 0 {
		return nil, errors.New("no alert destination configured")
	}
	return sinks, nil
}

// Run connects to NATS and runs the notifier until ctx ends.
func Run(ctx context.Context, cfg Config, log *slog.Logger, reg *prometheus.Registry) error {
	sinks, err := NewSinks(cfg, os.Stdout)
	if err != nil {
		return err
	}
	names := make([]string, len(sinks))
	for i, s := range sinks {
		names[i] = s.Name()
	}
	routes := route.All(names)
	if cfg.Routes != "" {
		if routes, err = route.Load(cfg.Routes, names); err != nil {
			return err
		}
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), cfg.Admin.ShutdownTimeout)
		defer cancel()
		for _, s := range sinks {
			if err := s.Close(closeCtx); err != nil {
				log.Warn("closing sink", "sink", s.Name(), "err", err)
			}
		}
	}()

	rt, err := service.Connect("notifier", cfg.NATS, cfg.Admin, log, reg)
	if err != nil {
		return err
	}
	defer rt.Close()
	var ledgerOpen atomic.Bool
	rt.Admin.AddCheck("ledger", func(context.Context) error {
		if !ledgerOpen.Load() {
			return fmt.Errorf("KV bucket %s not open yet", LedgerBucket)
		}
		return nil
	})
	m := newMetrics(reg)

	return rt.Serve(ctx, cfg.NATS.Streams, func(ctx context.Context, g *errgroup.Group) error {
		var claims *claim.Store
		var holds *gate.Store
		err := retry(ctx, log, "opening the ledger and holds buckets", func() error {
			var err error
			if claims, err = claim.Open(ctx, rt.JS, ledgerConfig(cfg)); err != nil {
				return err
			}
			holds, err = gate.OpenStore(ctx, rt.JS, cfg.NATS.Streams.Replicas)
			return err
		})
		if err != nil {
			return nil // shutting down
		}
		ledgerOpen.Store(true)
		log.Info("notifying", "destinations", strings.Join(names, ", "), "min_severity", cfg.MinSeverity)
		for _, s := range sinks {
			o := newOutput(s, claims, holds, routes, cfg, rt.JS, m, log)
			g.Go(func() error { return o.run(ctx) })
		}
		return nil
	})
}

// ledgerConfig is the claim store of posted alerts. The lease outlasts one
// post (its timeout) with a margin: a replica that dies mid-post blocks that
// one alert for at most this long.
func ledgerConfig(cfg Config) claim.Config {
	return claim.Config{
		Bucket:      LedgerBucket,
		Description: "claims on the alerts the whalewatch notifier posted, per destination",
		TTL:         cfg.DedupTTL,
		Replicas:    cfg.NATS.Streams.Replicas,
		Lease:       cfg.Slack.Timeout + 2*time.Second,
	}
}

// newOutput wires one destination.
func newOutput(s Sink, claims *claim.Store, holds *gate.Store, routes *route.Table, cfg Config, js JetStream, m *metrics, log *slog.Logger) *output {
	o := &output{
		sink: s, gate: gate.New(s.Name(), holds), claims: claims, routes: routes,
		cfg: cfg, js: js, m: m, log: log.With("destination", s.Name()), now: time.Now,
	}
	ac := aggConfig{Window: cfg.Window, Budget: cfg.Budget, DigestEvery: cfg.DigestEvery}
	if holds != nil && cfg.Budget > 0 {
		ac.Shared = gate.NewBudget(s.Name(), holds, float64(cfg.Budget), burstOf(cfg.Budget))
	}
	switch s := s.(type) {
	case *Console:
		// Every alert on its own line, on every replica: a terminal is not a
		// channel to keep quiet, and each replica prints to its own.
		o.claims = nil
		ac = aggConfig{DigestEvery: cfg.DigestEvery}
	case *JSONWebhook:
		// Programs want every threat; the budget is for people.
		ac = aggConfig{DigestEvery: cfg.DigestEvery}
	case Updater:
		o.updater = s
		ac.Updates = true
	}
	o.agg = newAggregator(ac, time.Now())
	return o
}

// retry calls f until it succeeds or ctx ends, backing off up to 5 s.
func retry(ctx context.Context, log *slog.Logger, what string, f func() error) error {
	delay := 100 * time.Millisecond
	for {
		err := f()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		log.Warn(what+", will retry", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}
