// Package notifier posts threats to Slack: it consumes the threats stream,
// renders each threat as a Block Kit message and posts it with an incoming
// webhook or the Web API, once per threat.
package notifier

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/service"
	"github.com/whalewatch/whalewatch/pkg/subject"
)

// MaxHold caps how long a Retry-After from Slack holds the notifier back, so
// that a bogus value cannot stall alerts for long.
const MaxHold = time.Minute

// Run connects to NATS and runs the notifier until ctx ends.
func Run(ctx context.Context, cfg Config, log *slog.Logger, reg *prometheus.Registry) error {
	sink, err := NewSink(cfg, os.Stdout)
	if err != nil {
		return err
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), cfg.Admin.ShutdownTimeout)
		defer cancel()
		if err := sink.Close(closeCtx); err != nil {
			log.Warn("closing sinks", "err", err)
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

	return rt.Serve(ctx, cfg.NATS.Streams, func(ctx context.Context, _ *errgroup.Group) error {
		ledger, err := openLedgerRetry(ctx, rt.JS, cfg, log)
		if err != nil {
			return nil // shutting down
		}
		ledgerOpen.Store(true)
		log.Info("notifying", "sinks", fmt.Sprint(sink), "min_severity", cfg.MinSeverity)
		return New(rt.JS, ledger, sink, cfg, log, reg).Run(ctx)
	})
}

// openLedgerRetry opens the ledger, retrying until NATS answers or ctx ends.
func openLedgerRetry(ctx context.Context, js KeyValueManager, cfg Config, log *slog.Logger) (Ledger, error) {
	delay := 100 * time.Millisecond
	for {
		l, err := OpenLedger(ctx, js, cfg.DedupTTL, cfg.NATS.Streams.Replicas)
		if err == nil {
			return l, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		log.Warn("opening the ledger, will retry", "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// Notifier consumes threats and hands each to its sink once.
type Notifier struct {
	cfg     Config
	js      bus.JetStream
	ledger  Ledger
	sink    Sink
	metrics *bus.ConsumerMetrics
	log     *slog.Logger
	alerts  *prometheus.CounterVec
	sendDur prometheus.Histogram

	holdMu    sync.Mutex
	holdUntil time.Time
}

// Outcomes of one alert, the values of whalewatch_notifier_alerts_total's label.
const (
	outcomePosted      = "posted"       // the sink accepted it
	outcomeDuplicate   = "duplicate"    // the ledger says it was posted before
	outcomeFiltered    = "filtered"     // below min-severity
	outcomeFailed      = "failed"       // transient failure, will retry
	outcomeRateLimited = "rate_limited" // Slack asked to slow down, will retry
	outcomeRejected    = "rejected"     // permanent failure, dead-lettered
)

// New returns a notifier that consumes with js, deduplicates with ledger and
// delivers to sink. The caller closes sink after Run returns.
func New(js bus.JetStream, ledger Ledger, sink Sink, cfg Config, log *slog.Logger, reg prometheus.Registerer) *Notifier {
	n := &Notifier{
		cfg:     cfg,
		js:      js,
		ledger:  ledger,
		sink:    sink,
		metrics: bus.NewConsumerMetrics(reg),
		log:     log,
		alerts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whalewatch_notifier_alerts_total",
			Help: "Threats handled, by outcome (posted, duplicate, filtered, failed, rate_limited, rejected).",
		}, []string{"outcome"}),
		sendDur: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "whalewatch_notifier_send_seconds",
			Help:    "Time one alert took to deliver, successful or not.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2.5, 8),
		}),
	}
	reg.MustRegister(n.alerts, n.sendDur)
	return n
}

// Run consumes threats of at least the configured severity until ctx ends.
//
// Redelivery is the retry: MaxDeliver is unlimited because Slack may be down
// for longer than any fixed number of attempts, and a permanent failure is
// dead-lettered at once. AckWait exceeds the longest a delivery can take (a
// Retry-After hold plus the request), so a threat being posted is not
// redelivered meanwhile.
func (n *Notifier) Run(ctx context.Context) error {
	c := bus.NewConsumer(n.js, bus.ConsumerConfig{
		Stream:         bus.StreamThreats,
		Durable:        n.cfg.Durable,
		FilterSubjects: subject.ThreatsAtLeast(n.cfg.MinSeverity),
		BatchSize:      1,
		AckWait:        MaxHold + 2*n.cfg.Slack.Timeout + 30*time.Second,
		MaxDeliver:     -1,
		MaxAckPending:  1000,
	}, bus.Each(n.Handle), n.metrics, n.log)
	return c.Run(ctx)
}

// Handle posts one threat unless the ledger says it was posted already.
func (n *Notifier) Handle(ctx context.Context, e *event.Event) error {
	if e.Event.Kind != event.KindAlert {
		n.alerts.WithLabelValues(outcomeRejected).Inc()
		return bus.Permanent(fmt.Errorf("event %s is not a threat: event.kind %q", e.Event.ID, e.Event.Kind))
	}
	if e.Whalewatch.Severity.Score() < n.cfg.MinSeverity.Score() {
		n.alerts.WithLabelValues(outcomeFiltered).Inc()
		return nil
	}
	posted, err := n.ledger.Posted(ctx, e.Event.ID)
	if err != nil {
		n.alerts.WithLabelValues(outcomeFailed).Inc()
		return err
	}
	if posted {
		n.alerts.WithLabelValues(outcomeDuplicate).Inc()
		n.log.Debug("threat already posted", "id", e.Event.ID)
		return nil
	}
	if err := n.waitHold(ctx); err != nil {
		return err
	}
	start := time.Now()
	err = n.sink.Send(ctx, e)
	n.sendDur.Observe(time.Since(start).Seconds())
	if err != nil {
		if d, ok := RetryAfter(err); ok {
			n.hold(d)
			n.alerts.WithLabelValues(outcomeRateLimited).Inc()
		} else if bus.IsPermanent(err) {
			n.alerts.WithLabelValues(outcomeRejected).Inc()
		} else {
			n.alerts.WithLabelValues(outcomeFailed).Inc()
		}
		return err
	}
	n.alerts.WithLabelValues(outcomePosted).Inc()
	n.log.Info("alert posted", "id", e.Event.ID, "rule", ruleID(e), "severity", e.Whalewatch.Severity, "host", e.Host.Name)
	// Slack has the alert: ack it even if the ledger cannot be written, since
	// a nak would post it again now, while an ack risks a repeat only if this
	// ack is lost too.
	if err := n.ledger.MarkPosted(ctx, e.Event.ID); err != nil {
		n.log.Warn("alert posted but not recorded; a redelivery would post it again", "id", e.Event.ID, "err", err)
	}
	return nil
}

func ruleID(e *event.Event) string {
	if e.Rule == nil {
		return ""
	}
	return e.Rule.ID
}

// hold keeps every sink idle for d (at most MaxHold): Slack rate-limits per
// webhook and channel, so any alert sent sooner would be refused too.
func (n *Notifier) hold(d time.Duration) {
	d = min(max(d, 0), MaxHold)
	n.holdMu.Lock()
	defer n.holdMu.Unlock()
	if until := time.Now().Add(d); until.After(n.holdUntil) {
		n.holdUntil = until
	}
	n.log.Warn("Slack rate limit, holding alerts", "for", d)
}

// waitHold waits until the hold has passed or ctx ends.
func (n *Notifier) waitHold(ctx context.Context) error {
	n.holdMu.Lock()
	wait := time.Until(n.holdUntil)
	n.holdMu.Unlock()
	if wait <= 0 {
		return nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return fmt.Errorf("waiting out Slack's rate limit: %w", ctx.Err())
	case <-t.C:
		return nil
	}
}
