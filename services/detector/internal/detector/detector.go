// Package detector turns telemetry into threats.
package detector

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/service"
	"github.com/whalewatch/whalewatch/pkg/subject"
	"github.com/whalewatch/whalewatch/services/detector/internal/partition"
	"github.com/whalewatch/whalewatch/services/detector/internal/requester"
	"github.com/whalewatch/whalewatch/services/detector/internal/rules"
	"github.com/whalewatch/whalewatch/services/detector/internal/state"
)

// Run connects to NATS and runs the detector until ctx ends.
func Run(ctx context.Context, cfg Config, log *slog.Logger, reg *prometheus.Registry) error {
	rt, err := service.Connect("detector", cfg.NATS, cfg.Admin, log, reg)
	if err != nil {
		return err
	}
	defer rt.Close()
	return rt.Serve(ctx, cfg.NATS.Streams, func(ctx context.Context, g *errgroup.Group) error {
		d := New(rt.JS, cfg, log, reg)
		g.Go(func() error { return d.engine.Run(ctx) }) // reloads rules on change
		return d.Run(ctx)
	})
}

// Detector consumes telemetry, evaluates rules and publishes threats.
type Detector struct {
	cfg     Config
	js      bus.JetStream
	pub     *bus.EventPublisher
	metrics *bus.ConsumerMetrics
	engine  *rules.Engine
	log     *slog.Logger
	threats *prometheus.CounterVec
	folded  *prometheus.CounterVec
	now     func() time.Time
	// tracker observes every event before the rules (state.Snapshot);
	// recorder is the same object, for baseline sync and partition moves.
	tracker   state.Tracker
	recorder  *state.Recorder
	responder *requester.Responder
	reg       prometheus.Registerer
	// partitionHooks lets tests watch partition ownership.
	partitionHooks partition.Hooks
}

// New returns a detector that publishes on js.
func New(js bus.JetStream, cfg Config, log *slog.Logger, reg prometheus.Registerer) *Detector {
	// Threats and response requests leave complete (ECS), so that the
	// indexer stores them as they are; agent.name is where the detector runs.
	host, _ := os.Hostname()
	agent := event.Agent{Type: "whalewatch-detector", Name: host, Version: service.ReadBuildInfo().Version}
	d := &Detector{
		cfg:     cfg,
		js:      js,
		pub:     bus.NewEventPublisher(js, reg, bus.CompleteAs(agent)),
		metrics: bus.NewConsumerMetrics(reg),
		log:     log,
		threats: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whalewatch_detector_threats_total",
			Help: "Threats published, by rule and severity.",
		}, []string{"rule", "severity"}),
		folded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whalewatch_detector_threats_folded_total",
			Help: "Threats not published because they repeat a rule already raised in their container's open incident, by rule.",
		}, []string{"rule"}),
		now: time.Now,
	}
	reg.MustRegister(d.threats, d.folded)
	var err error
	if d.engine, err = rules.NewEngine(cfg.Rules, log, reg); err != nil {
		// Validate loaded them a moment ago: the files changed since.
		log.Error("rules rejected, running the shipped rules", "err", err)
	}
	d.reg = reg
	d.recorder = state.NewRecorder(cfg.State, reg, anomalyScorer(log))
	d.tracker = d.recorder
	responder, err := requester.New(cfg.Response, d.pub, reg)
	if err != nil {
		log.Error("responses disabled", "err", err)
	}
	d.responder = responder
	return d
}

// Run consumes telemetry until ctx ends.
func (d *Detector) Run(ctx context.Context) error {
	if js, ok := d.js.(stateJetStream); ok {
		return d.runStateful(ctx, js)
	}
	return d.consume(ctx)
}

// consume runs the single shared telemetry consumer (partitioning off).
func (d *Detector) consume(ctx context.Context) error {
	c := bus.NewConsumer(d.js, bus.ConsumerConfig{
		Stream:         bus.StreamTelemetry,
		Durable:        d.cfg.Durable,
		FilterSubjects: []string{subject.AllTelemetry},
		BatchSize:      1,
		MaxDeliver:     10,
	}, bus.Each(d.Handle), d.metrics, d.log)
	return c.Run(ctx)
}

// Handle evaluates one telemetry event and publishes the threats it raises.
// An error means the threats may not all be published; the event is retried,
// and the threats' derived ids keep a retry from storing them twice.
func (d *Detector) Handle(ctx context.Context, e *event.Event) error {
	if e.Event.Kind != event.KindEvent {
		return nil
	}
	st := d.tracker.Observe(e)
	for _, m := range d.engine.Evaluate(e, &st) {
		t := Threat(e, m, d.now())
		cid := ""
		if t.Container != nil {
			cid = t.Container.ID
		}
		inc, publish := d.recorder.Incident(t.Host.Name, cid, m.Rule.ID, t.Event.ID, t.Timestamp)
		if !publish {
			d.folded.WithLabelValues(m.Rule.ID).Inc()
			continue
		}
		t.Whalewatch.Incident = &inc
		d.addEvidence(t, e)
		if err := d.pub.Publish(ctx, subject.ForThreat(t), t); err != nil {
			d.recorder.Unpublished(t.Host.Name, cid, m.Rule.ID)
			return err
		}
		d.threats.WithLabelValues(m.Rule.ID, string(m.Rule.Severity)).Inc()
		d.respond(ctx, t)
		d.log.Info("threat", "rule", m.Rule.ID, "severity", m.Rule.Severity, "host", t.Host.Name, "message", t.Message)
	}
	return nil
}

// addEvidence adds to threat t what the detector knows about its container
// (recent logs, file changes, connections, execs) and the process's
// ancestry, from the telemetry e when it carries one, else from the
// container's process table. Bounded like everything else a container
// controls.
func (d *Detector) addEvidence(t, e *event.Event) {
	if t.Container == nil {
		return
	}
	pid := 0
	if e.Process != nil {
		pid = e.Process.PID
	}
	ev, ancestry := d.recorder.Evidence(t.Container.ID, pid)
	t.Whalewatch.Evidence = ev
	if len(e.Whalewatch.Ancestry) > 0 {
		ancestry = slices.Clone(e.Whalewatch.Ancestry)
	}
	t.Whalewatch.Ancestry = ancestry
	t.Bound()
}

// Threat builds the threat document for a rule match on telemetry e. Its id
// derives from the rule and e's id, so a redelivered e yields the same threat.
func Threat(e *event.Event, m rules.Match, now time.Time) *event.Event {
	r := m.Rule
	t := &event.Event{
		Timestamp: e.Timestamp,
		Event: event.Meta{
			ID:       event.DeriveID("threat", r.ID, e.Event.ID),
			Kind:     event.KindAlert,
			Category: []string{"intrusion_detection"},
			Type:     []string{"info"},
			Action:   r.ID,
			Dataset:  event.DatasetThreat,
			Module:   event.Module,
			Severity: r.Severity.Score(),
			Created:  now.UTC(),
		},
		Host:      e.Host,
		Container: e.Container,
		Process:   e.Process,
		// What a file or network rule is about.
		Source:      e.Source,
		Destination: e.Destination,
		File:        e.File,
		Network:     e.Network,
		Tags:        slices.Clone(r.Tags), // Bound edits in place; r is shared by concurrent partitions
		Rule:        &event.Rule{ID: r.ID, Name: r.Name, Description: r.Description, Ruleset: "whalewatch-default"},
		Threat: &event.Threat{
			Framework: event.FrameworkMITRE,
			Technique: event.Technique{ID: []string{r.TechniqueID}, Name: []string{r.Technique}},
			Tactic:    event.Tactic{ID: []string{r.TacticID}, Name: []string{r.Tactic}},
		},
		Whalewatch: event.Whalewatch{
			SchemaVersion: event.SchemaVersion,
			Severity:      r.Severity,
			Trigger:       e.Event.ID,
			Stdio:         e.Whalewatch.Stdio,
			FileChange:    e.Whalewatch.FileChange,
			Socket:        e.Whalewatch.Socket,
			Syscall:       e.Whalewatch.Syscall,
		},
	}
	t.Message = threatMessage(t, m)
	t.Bound()
	return t
}

func threatMessage(t *event.Event, m rules.Match) string {
	var b strings.Builder
	b.WriteString(m.Message)
	if c := t.Container; c != nil {
		fmt.Fprintf(&b, " in container %s", c.Name)
		if c.Image.Name != "" {
			fmt.Fprintf(&b, " (image %s)", c.Image.Name)
		}
	}
	fmt.Fprintf(&b, " on host %s", t.Host.Name)
	if p := t.Process; p != nil && p.CommandLine != "" {
		fmt.Fprintf(&b, ": %s", p.CommandLine)
	}
	return b.String()
}
