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
	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/claim"
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

// DoneBucket is the NATS KV bucket of answered requests, a pkg/claim store:
// key `<host token>.<request id>` (the host as a subject token, so that a
// collector's NATS permission is `$KV.whalewatch_actions_done.<host>.>`;
// a request id that is not a plain KV key is hashed, see claim.Key).
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
	claim.KeyValueManager
}

// claimer is the claim store of answered requests (*claim.Store).
type claimer interface {
	Claim(ctx context.Context, key string) (claim.Claim, error)
	Done(ctx context.Context, c claim.Claim) error
}

// Executor consumes this host's response requests and carries them out.
//
// Exactly-once (pkg/claim): before acting it claims the request id in
// DoneBucket, a write stored with the bucket's replicas. Only the winner
// acts; it publishes the result (its id derived from the request's, so a
// repeated publish is stored once), marks the claim done, then acks. A
// request answered before (redelivered after a lost ack, or re-published
// under another message id) is acked without acting or publishing again; one
// whose claim is held (an attempt in progress, or one that died) is retried
// after a back-off. A NATS leader change delays a claim, it does not lose it
// or let a second attempt act. A collector that dies between acting and
// marking the claim done leaves the claim held until its lease (twice the
// longest action) runs out; the next delivery then acts again, and every action is
// idempotent on the engine's side (pausing a paused container is done
// without a call), so that acts at most once in effect.
type Executor struct {
	cfg    Config
	host   string
	docker Docker
	js     JetStream
	pub    Publisher
	claims claimer
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
				Help: "Requests answered before (redelivered): acked, nothing was done or published again.",
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
	if r.claims == nil {
		claims, err := r.openClaims(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil // shutting down
			}
			return err
		}
		r.claims = claims
	}
	r.log.Info("answering response requests", "mode", r.cfg.Mode, "protected_label", r.cfg.ProtectedLabel,
		"own_container", r.self, "durable", r.Durable())
	c := bus.NewConsumer(r.js, bus.ConsumerConfig{
		Stream:         bus.StreamActions,
		Durable:        r.Durable(),
		FilterSubjects: []string{subject.ActionRequestsFor(r.host)},
		BatchSize:      1,
		MaxDeliver:     10,
		// AckWait: pkg/bus's default (5 s). The consumer acks a request in
		// progress while it is acted on, so the ack wait is only how long
		// a request the dying consumer leader had sent waits to be sent
		// again; the claim, not the ack wait, keeps a second attempt from
		// acting beside the first.
	}, bus.Each(r.handle), r.cm, r.log)
	return c.Run(ctx)
}

// actionTime is the longest an action takes: a stop's grace period and two
// engine calls.
func (r *Executor) actionTime() time.Duration { return r.cfg.StopTimeout + 2*source.CallTimeout }

// lease is the claim's lease, twice the longest action: a request
// redelivered while the first attempt still acts (its in-progress acks went
// to a consumer leader that died) finds the claim held and waits rather than
// acting beside it.
func (r *Executor) lease() time.Duration { return 2 * r.actionTime() }

// openClaims opens the done bucket, creating it when missing, retrying until
// NATS answers (pkg/claim, pkg/bus OpenKeyValue). Its keys expire with the
// actions stream's max age: a request is never redelivered after it left the
// stream. A host whose name is not a plain KV key token is an error.
func (r *Executor) openClaims(ctx context.Context) (claimer, error) {
	s, err := claim.Open(ctx, r.js, claim.Config{
		Bucket:      DoneBucket,
		Description: "response requests the whalewatch collectors answered (claims, key <host>.<request id>)",
		TTL:         r.ttl,
		Replicas:    max(r.rep, 1),
		Lease:       r.lease(),
		Prefix:      subject.Token(r.host),
		OnRetry: func(err error) {
			r.log.Warn("opening the done bucket, will retry", "err", err)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("response requests: %w", err)
	}
	return s, nil
}

// handle answers one request. It returns an error (nak, redelivery) only when
// NATS failed; every outcome of the action itself is a result.
func (r *Executor) handle(ctx context.Context, e *event.Event) error {
	cctx, cancel := context.WithTimeout(ctx, r.lease())
	defer cancel()
	c, err := r.claims.Claim(cctx, e.Event.ID)
	if err != nil {
		return err
	}
	switch c.State {
	case claim.Done:
		r.m.replays.Inc()
		r.log.Info("request answered before, its result published then: nothing done again", "request_id", e.Event.ID)
		return nil
	case claim.Held:
		return fmt.Errorf("request %s is being answered elsewhere or was interrupted: claim held for %v more",
			event.Truncate(e.Event.ID, 64), c.Wait(r.now()).Round(time.Second))
	}
	res := r.respond(ctx, e)
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
	// Acted: from here on the claim is kept. If the result or the done mark
	// cannot be stored within the lease, the claim's lease runs out and a
	// later delivery answers again (idempotently).
	pctx, cancel := context.WithTimeout(ctx, r.lease())
	defer cancel()
	err = retry.Backoff{Initial: 250 * time.Millisecond, Max: 2 * time.Second}.Do(pctx, func(ctx context.Context) error {
		// Each try gets its own deadline: a publish sent to a stream
		// leader that died is not answered.
		actx, cancel := context.WithTimeout(ctx, publishTimeout)
		defer cancel()
		return r.pub.Publish(actx, response.ResultSubject(res), res)
	}, func(err error, delay time.Duration) {
		r.log.Warn("publishing the result, will retry", "request_id", e.Event.ID, "retry_in", delay, "err", err)
	})
	if err != nil {
		return fmt.Errorf("publishing the result of %s: %w", event.Truncate(e.Event.ID, 64), err)
	}
	return r.claims.Done(pctx, c)
}

// publishTimeout bounds one try of publishing a result.
const publishTimeout = 5 * time.Second

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
