// Package executor carries out response actions on this host's containers:
// it consumes the requests the detector (the requester, which decides by
// policy) or an operator publishes for this host, acts through the Docker
// engine exactly once per request, and publishes the result.
package executor

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/response"
	"github.com/whalewatch/whalewatch/pkg/retry"
	"github.com/whalewatch/whalewatch/pkg/subject"
	"github.com/whalewatch/whalewatch/services/collector/internal/source"
)

// Modes (-response-mode).
const (
	ModeDryRun  = "dry-run" // answer every request with a dry_run result; act on nothing
	ModeEnforce = "enforce" // act, unless the request itself is a dry run
	ModeOff     = "off"     // do not consume requests (they wait in the stream)
)

// ComponentLabel marks whalewatch's own containers, on which the collector
// never acts whatever the request.
const ComponentLabel = "whalewatch.component"

// DoneBucket is the NATS KV bucket of answered requests: key the request id,
// value the result document.
const DoneBucket = "whalewatch_actions_done"

// Config configures the executor.
type Config struct {
	// Mode is ModeDryRun (default), ModeEnforce or ModeOff.
	Mode string
	// ProtectedLabel names the label that protects a container: present with
	// any value but false/0/no, every request for it is refused.
	ProtectedLabel string
	// MaxAge refuses requests older than this (a collector that was down
	// does not kill yesterday's containers); 0 disables the check.
	MaxAge time.Duration
	// StopTimeout is the grace period of stop before SIGKILL.
	StopTimeout time.Duration
}

// RegisterFlags registers the response flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Mode, "response-mode", ModeDryRun, "response actions: dry-run (report what would be done), enforce (act), off (do not consume requests)")
	fs.StringVar(&c.ProtectedLabel, "protected-label", "whalewatch.protected", "container label that refuses every response action (any value but false, 0, no)")
	fs.DurationVar(&c.MaxAge, "response-max-age", 10*time.Minute, "refuse response requests older than this (0: no limit)")
	fs.DurationVar(&c.StopTimeout, "response-stop-timeout", 10*time.Second, "grace period of the stop action before SIGKILL")
}

// Validate checks c.
func (c *Config) Validate() error {
	var errs []error
	switch c.Mode {
	case ModeDryRun, ModeEnforce, ModeOff:
	default:
		errs = append(errs, fmt.Errorf("response-mode %q: want dry-run, enforce or off", c.Mode))
	}
	if c.ProtectedLabel == "" {
		errs = append(errs, errors.New("protected-label must not be empty"))
	}
	if c.MaxAge < 0 {
		errs = append(errs, errors.New("response-max-age must not be negative"))
	}
	if c.StopTimeout < 0 {
		errs = append(errs, errors.New("response-stop-timeout must not be negative"))
	}
	return errors.Join(errs...)
}

// Docker is what the executor asks of the engine. *client.Client has every
// method.
type Docker interface {
	ContainerInspect(ctx context.Context, id string) (container.InspectResponse, error)
	ContainerPause(ctx context.Context, id string) error
	ContainerUnpause(ctx context.Context, id string) error
	ContainerStop(ctx context.Context, id string, options container.StopOptions) error
	ContainerKill(ctx context.Context, id, signal string) error
	ContainerUpdate(ctx context.Context, id string, cfg container.UpdateConfig) (container.UpdateResponse, error)
	NetworkDisconnect(ctx context.Context, networkID, containerID string, force bool) error
}

// JetStream is the part of JetStream the executor needs.
type JetStream interface {
	bus.JetStream
	CreateOrUpdateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error)
}

// doneStore remembers the result of each answered request.
type doneStore interface {
	get(ctx context.Context, requestID string) ([]byte, bool, error)
	put(ctx context.Context, requestID string, result []byte) error
}

// Executor consumes this host's response requests and carries them out.
//
// Exactly-once: before acting it looks the request id up in DoneBucket; a
// request answered before (redelivered after a lost ack, or re-published
// under another message id) gets its stored result re-published (same result
// id, so JetStream stores it once) and nothing is done again. After acting it
// stores the result, then publishes it, then acks. A crash between acting and
// storing makes the request run again; every action is idempotent on the
// engine's side (pausing a paused container is done without a call), so that
// acts at most once in effect.
type Executor struct {
	cfg    Config
	host   string
	docker Docker
	js     JetStream
	pub    Publisher
	done   doneStore
	self   string // the collector's own container id, if it runs in one
	ttl    time.Duration
	rep    int
	cm     *bus.ConsumerMetrics
	m      responseMetrics
	log    *slog.Logger
	now    func() time.Time
}

type responseMetrics struct {
	results *prometheus.CounterVec
	replays prometheus.Counter
}

// Publisher publishes results (bus.EventPublisher).
type Publisher interface {
	Publish(ctx context.Context, subj string, e *event.Event) error
}

// New returns an executor for host that acts through docker, consumes on js
// and publishes results with pub. streams are the deployment's stream
// settings (the done bucket's keys live as long as the actions stream's
// messages). It registers its metrics on reg.
func New(docker Docker, js JetStream, pub Publisher, cfg Config, host string, streams bus.StreamsConfig, log *slog.Logger, reg prometheus.Registerer) *Executor {
	r := &Executor{
		cfg:    cfg,
		host:   host,
		docker: docker,
		js:     js,
		pub:    pub,
		self:   selfContainerID(os.ReadFile),
		ttl:    streams.Actions.MaxAge,
		rep:    streams.Replicas,
		cm:     bus.NewConsumerMetrics(reg),
		log:    log.With("component", "executor"),
		now:    time.Now,
		m: responseMetrics{
			results: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "whalewatch_collector_responses_total",
				Help: "Response requests answered, by action and status (done, refused, failed, dry_run).",
			}, []string{"action", "status"}),
			replays: prometheus.NewCounter(prometheus.CounterOpts{
				Name: "whalewatch_collector_response_replays_total",
				Help: "Requests answered before (redelivered): their stored result was re-published, nothing was done again.",
			}),
		},
	}
	reg.MustRegister(r.m.results, r.m.replays)
	return r
}

// Durable is the consumer's durable name: one per host, shared by its
// collector's restarts.
func (r *Executor) Durable() string {
	return "collector-actions-" + durableToken(r.host)
}

// durableToken is subject.Token without the path separators a durable name
// may not contain either.
func durableToken(s string) string {
	return strings.NewReplacer("/", "_", `\`, "_").Replace(subject.Token(s))
}

// Run opens the done bucket and consumes requests until ctx ends. In mode off
// it returns at once.
func (r *Executor) Run(ctx context.Context) error {
	if r.cfg.Mode == ModeOff {
		r.log.Info("response actions off: requests are not consumed")
		return nil
	}
	if r.done == nil {
		done, err := r.openDone(ctx)
		if err != nil {
			return nil // shutting down
		}
		r.done = done
	}
	r.log.Info("answering response requests", "mode", r.cfg.Mode, "protected_label", r.cfg.ProtectedLabel,
		"own_container", r.self, "durable", r.Durable())
	c := bus.NewConsumer(r.js, bus.ConsumerConfig{
		Stream:         bus.StreamActions,
		Durable:        r.Durable(),
		FilterSubjects: []string{subject.ActionRequestsFor(r.host)},
		BatchSize:      1,
		AckWait:        r.cfg.StopTimeout + 2*source.CallTimeout,
		MaxDeliver:     10,
	}, bus.Each(r.handle), r.cm, r.log)
	return c.Run(ctx)
}

// openDone creates or updates the done bucket, retrying until NATS answers.
// Its keys expire with the actions stream's max age: a request is never
// redelivered after it left the stream.
func (r *Executor) openDone(ctx context.Context) (doneStore, error) {
	var kv jetstream.KeyValue
	err := retry.Backoff{Initial: 100 * time.Millisecond, Max: 5 * time.Second}.Do(ctx, func(ctx context.Context) error {
		var err error
		kv, err = r.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      DoneBucket,
			Description: "response requests the whalewatch collectors answered, with their result",
			TTL:         r.ttl,
			History:     1,
			Storage:     jetstream.FileStorage,
			Replicas:    max(r.rep, 1),
		})
		return err
	}, func(err error, _ time.Duration) {
		r.log.Warn("opening the done bucket, will retry", "err", err)
	})
	if err != nil {
		return nil, err
	}
	return kvDone{kv}, nil
}

// handle answers one request. It returns an error (nak, redelivery) only when
// NATS failed; every outcome of the action itself is a result.
func (r *Executor) handle(ctx context.Context, e *event.Event) error {
	prev, ok, err := r.done.get(ctx, e.Event.ID)
	if err != nil {
		return err
	}
	if ok {
		res, err := event.Decode(prev)
		if err == nil {
			r.m.replays.Inc()
			r.log.Info("request answered before, re-publishing its result", "request_id", e.Event.ID,
				"status", res.Whalewatch.Response.Status)
			return r.pub.Publish(ctx, response.ResultSubject(res), res)
		}
		r.log.Warn("stored result unreadable, answering again", "request_id", e.Event.ID, "err", err)
	}
	res := r.respond(ctx, e)
	data, err := event.Marshal(res)
	if err != nil {
		return bus.Permanent(err)
	}
	if err := r.done.put(ctx, e.Event.ID, data); err != nil {
		return err
	}
	resp := res.Whalewatch.Response
	action := resp.Action
	if !response.ValidAction(response.Action(action)) {
		action = "invalid"
	}
	r.m.results.WithLabelValues(action, resp.Status).Inc()
	lvl := slog.LevelInfo
	if response.Status(resp.Status) == response.StatusFailed {
		lvl = slog.LevelWarn
	}
	r.log.Log(ctx, lvl, "response request answered", "request_id", e.Event.ID, "action", resp.Action,
		"status", resp.Status, "reason", resp.Reason, "container_id", res.Container.ID, "trigger", e.Whalewatch.Trigger)
	return r.pub.Publish(ctx, response.ResultSubject(res), res)
}

// respond decides and, in enforce mode, acts; it returns the result.
func (r *Executor) respond(ctx context.Context, e *event.Event) *event.Event {
	now := r.now()
	result := func(status response.Status, reason string, ctr *event.Container) *event.Event {
		return response.NewResult(e, status, reason, ctr, now)
	}
	if e.Container == nil {
		e.Container = &event.Container{}
	}
	if e.Host.Name == "" {
		e.Host.Name = r.host // the subject said it is ours; a result needs a host
	}
	req, err := response.ParseRequest(e)
	if err != nil {
		return result(response.StatusRefused, "invalid request: "+err.Error(), nil)
	}
	if age := now.Sub(req.Time); r.cfg.MaxAge > 0 && age > r.cfg.MaxAge {
		return result(response.StatusRefused, fmt.Sprintf("expired: requested %s ago, limit %s", age.Round(time.Second), r.cfg.MaxAge), nil)
	}
	ictx, cancel := context.WithTimeout(ctx, source.CallTimeout)
	in, err := r.docker.ContainerInspect(ictx, req.ContainerID)
	cancel()
	switch {
	case cerrdefs.IsNotFound(err):
		return result(response.StatusRefused, "no such container", nil)
	case err != nil:
		return result(response.StatusFailed, "inspecting the container: "+err.Error(), nil)
	case in.ContainerJSONBase == nil || in.ID != req.ContainerID:
		return result(response.StatusRefused, "no such container", nil) // resolved by name or prefix: not the one meant
	}
	ctr := source.FromInspect(in).ECS()
	if why := r.refusal(in); why != "" {
		return result(response.StatusRefused, why, ctr)
	}
	if req.DryRun || r.cfg.Mode != ModeEnforce {
		return result(response.StatusDryRun, "dry run: would "+describe(req), ctr)
	}
	note, err := r.act(ctx, req, in)
	if err != nil {
		return result(response.StatusFailed, err.Error(), ctr)
	}
	return result(response.StatusDone, note, ctr)
}

// refusal says why the collector must not act on the container, or "".
func (r *Executor) refusal(in container.InspectResponse) string {
	var labels map[string]string
	if in.Config != nil {
		labels = in.Config.Labels
	}
	if v, ok := labels[r.cfg.ProtectedLabel]; ok {
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "false", "0", "no":
		default:
			return "protected by label " + r.cfg.ProtectedLabel
		}
	}
	if _, ok := labels[ComponentLabel]; ok {
		return "whalewatch's own container (label " + ComponentLabel + ")"
	}
	if r.self != "" && in.ID == r.self {
		return "the collector's own container"
	}
	return ""
}

func describe(req response.Request) string {
	switch req.Action {
	case response.Disconnect:
		return "disconnect the container from all networks"
	case response.LimitCPU:
		return fmt.Sprintf("limit the container's CPU to %g cores", req.CPUs)
	}
	return string(req.Action) + " the container"
}

// kvDone is a doneStore in a NATS KV bucket.
type kvDone struct{ kv jetstream.KeyValue }

func (d kvDone) get(ctx context.Context, id string) ([]byte, bool, error) {
	v, err := d.kv.Get(ctx, doneKey(id))
	switch {
	case err == nil:
		return v.Value(), true, nil
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return nil, false, nil
	}
	return nil, false, fmt.Errorf("looking up request %s in %s: %w", event.Truncate(id, 64), DoneBucket, err)
}

func (d kvDone) put(ctx context.Context, id string, result []byte) error {
	if _, err := d.kv.Put(ctx, doneKey(id), result); err != nil {
		return fmt.Errorf("recording request %s in %s: %w", event.Truncate(id, 64), DoneBucket, err)
	}
	return nil
}

// doneKey is the request id when it is a plain KV key (NewID and DeriveID ids
// are hex), a hash of it otherwise: ids come over the wire, and KV keys allow
// only [-/_=.a-zA-Z0-9]. A hashed key contains a '.', a plain one cannot.
func doneKey(id string) string {
	plain := id != "" && len(id) <= 128
	for i := 0; plain && i < len(id); i++ {
		c := id[i]
		plain = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
	}
	if plain {
		return id
	}
	return "h." + event.DeriveID("done-key", id)
}
