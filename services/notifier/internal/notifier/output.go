package notifier

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/claim"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/subject"
	"github.com/whalewatch/whalewatch/services/notifier/internal/gate"
	"github.com/whalewatch/whalewatch/services/notifier/internal/render"
	"github.com/whalewatch/whalewatch/services/notifier/internal/route"
)

// An output is one destination with its own progress: one durable consumer
// per severity (<consumer>-<destination>-<severity>), so that
//
//   - a failing destination neither blocks nor silences the others (each
//     has its own consumers, acks and back-off), and
//   - critical and high threats never wait behind queued lower ones: each
//     severity is consumed on its own, and posting a critical threat never
//     waits for the low ones before it in the stream.
//
// A threat is posted once across replicas and redeliveries by a claim
// (pkg/claim) on "<destination>/<event id>" taken before posting and marked
// done after: see the README's delivery guarantee.
//
// The outputs consume with their own loop rather than bus.Consumer, whose
// handler sees events, not messages: the notifier needs in-progress acks for
// every message a replica holds, a nak delay chosen per message (a 429's
// Retry-After, a claim's lease, a back-off shared with other replicas), a
// prefetch sized from how long messages take, and a start position for new
// consumers. Dead letters keep pkg/bus's subject and headers.
type output struct {
	sink    Sink
	updater Updater // nil when the sink cannot update messages
	gate    *gate.Gate
	claims  *claim.Store // nil: no claims (the console is per process)
	routes  *route.Table
	agg     *aggregator
	cfg     Config
	js      JetStream
	m       *metrics
	log     *slog.Logger
	now     func() time.Time
}

// JetStream is the part of JetStream the notifier's consumers need.
type JetStream interface {
	bus.Publisher
	Consumer(ctx context.Context, stream, name string) (jetstream.Consumer, error)
	CreateConsumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error)
	UpdateConsumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error)
}

// durable is the consumer name of this output for severity sev.
func (o *output) durable(sev event.Severity) string {
	return o.cfg.Durable + "-" + o.sink.Name() + "-" + string(sev)
}

// run consumes every severity the output takes and flushes its groups and
// digests, until ctx ends.
func (o *output) run(ctx context.Context) error {
	var wg sync.WaitGroup
	least := max(o.cfg.MinSeverity.Score(), o.routes.MinSeverity(o.sink.Name()).Score())
	for _, sev := range event.Severities {
		if sev.Score() < least {
			continue
		}
		wg.Go(func() { o.consume(ctx, sev) })
	}
	wg.Go(func() {
		if err := o.gate.Watch(ctx); err != nil {
			o.log.Warn("not following other replicas' holds", "err", err)
		}
	})
	wg.Go(func() { o.flushLoop(ctx) })
	wg.Wait()
	return nil
}

// ensureConsumer creates the durable consumer for sev, or updates it. A
// consumer that does not exist yet starts at now minus MaxAge: a new
// notifier on a stream of old threats does not post them one by one. An
// existing one keeps its position.
func (o *output) ensureConsumer(ctx context.Context, sev event.Severity) (jetstream.Consumer, error) {
	start := o.now().Add(-o.cfg.MaxAge)
	cfg := jetstream.ConsumerConfig{
		Durable:       o.durable(sev),
		Description:   "whalewatch notifier: " + string(sev) + " threats to " + o.sink.Name(),
		FilterSubject: subject.ThreatsPrefix + "." + string(sev) + ".>",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       o.cfg.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: 1000,
		DeliverPolicy: jetstream.DeliverByStartTimePolicy,
		OptStartTime:  &start,
	}
	for {
		c, err := o.js.Consumer(ctx, bus.StreamThreats, cfg.Durable)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			c, err = o.js.CreateConsumer(ctx, bus.StreamThreats, cfg)
			if errors.Is(err, jetstream.ErrConsumerExists) {
				continue // another replica was first: take its start position
			}
			return c, err
		}
		if err != nil {
			return nil, err
		}
		old := c.CachedInfo().Config
		cfg.DeliverPolicy, cfg.OptStartTime, cfg.OptStartSeq = old.DeliverPolicy, old.OptStartTime, old.OptStartSeq
		return o.js.UpdateConsumer(ctx, bus.StreamThreats, cfg)
	}
}

// consume handles one severity's threats until ctx ends.
func (o *output) consume(ctx context.Context, sev event.Severity) {
	log := o.log.With("consumer", o.durable(sev))
	var cons jetstream.Consumer
	delay := 100 * time.Millisecond
	for {
		var err error
		if cons, err = o.ensureConsumer(ctx, sev); err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		log.Warn("creating consumer, will retry", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
	log.Debug("consuming")
	// The batch is sized so that the replica can handle all of it within the
	// ack deadline, from how long a message has taken (at first, as if one
	// took half the deadline); messages this replica cannot reach in time
	// stay with the server for the others. While the batch waits its
	// messages get in-progress acks, so that nothing is redelivered to
	// another replica while this one is alive.
	perMsg := o.cfg.AckWait / 2
	for ctx.Err() == nil {
		n := int(min(max(o.cfg.AckWait/2/max(perMsg, time.Millisecond), 1), 256))
		batch, err := cons.Fetch(n, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			if ctx.Err() == nil {
				log.Debug("fetching", "err", err)
				time.Sleep(200 * time.Millisecond)
			}
			continue
		}
		perMsg = o.handleBatch(ctx, batch, sev, perMsg)
	}
}

// handleBatch handles the messages of one fetch as they arrive and returns
// the updated time per message.
func (o *output) handleBatch(ctx context.Context, batch jetstream.MessageBatch, sev event.Severity, perMsg time.Duration) time.Duration {
	var mu sync.Mutex
	held := map[jetstream.Msg]bool{}
	queue := make(chan jetstream.Msg, 256)
	stop := make(chan struct{})
	first := make(chan struct{}) // closed with the first message held
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(queue)
		for m := range batch.Messages() {
			mu.Lock()
			if len(held) == 0 && first != nil {
				close(first)
				first = nil
			}
			held[m] = true
			mu.Unlock()
			queue <- m
		}
	})
	wg.Go(func() {
		// No ticker until a message is held: an idle pull wakes nothing.
		mu.Lock()
		wait := first
		mu.Unlock()
		if wait != nil {
			select {
			case <-stop:
				return
			case <-wait:
			}
		}
		t := time.NewTicker(max(o.cfg.AckWait/3, 100*time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				mu.Lock()
				for m := range held {
					_ = m.InProgress()
				}
				mu.Unlock()
			}
		}
	})
	for m := range queue {
		if ctx.Err() != nil {
			_ = m.Nak() // let another replica have it now
		} else {
			start := time.Now()
			o.process(ctx, m, sev)
			perMsg = (perMsg*7 + time.Since(start)) / 8
		}
		mu.Lock()
		delete(held, m)
		mu.Unlock()
	}
	close(stop)
	wg.Wait()
	return perMsg
}

// process handles one message and settles it. Work on a message outlives
// shutdown by a bounded time, so that a post in flight is recorded rather
// than repeated.
func (o *output) process(ctx context.Context, m jetstream.Msg, sev event.Severity) {
	work, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.cfg.Slack.Timeout+10*time.Second)
	defer cancel()
	o.settle(work, m, o.handle(work, m, sev))
}

// result is what becomes of a message.
type result struct {
	ack   bool
	delay time.Duration // nak with this delay
	dead  error         // dead-letter with this reason
}

func ack() result                          { return result{ack: true} }
func retryIn(d time.Duration) result       { return result{delay: max(d, 50*time.Millisecond)} }
func deadLetter(err error) result          { return result{dead: err} }
func (o *output) count(outcome string)     { o.m.alerts.WithLabelValues(o.sink.Name(), outcome).Inc() }
func jitter(d time.Duration) time.Duration { return d + rand.N(d/5+time.Millisecond) }

// handle decides and does what the message's threat needs.
func (o *output) handle(ctx context.Context, m jetstream.Msg, sev event.Severity) result {
	e, err := event.Decode(m.Data())
	if err != nil {
		o.count(outcomeRejected)
		return deadLetter(err)
	}
	if e.Event.Kind != event.KindAlert {
		o.count(outcomeRejected)
		return deadLetter(fmt.Errorf("event %s is not a threat: event.kind %q", e.Event.ID, e.Event.Kind))
	}
	if !o.routes.Wants(o.sink.Name(), e) {
		o.count(outcomeFiltered)
		return ack()
	}
	now := o.now()
	if md, err := m.Metadata(); err == nil && now.Sub(md.Timestamp) > o.cfg.MaxAge {
		o.agg.stale(e, now)
		o.count(outcomeStale)
		return ack()
	}
	switch o.agg.admit(e, now) {
	case admitGrouped:
		o.count(outcomeGrouped)
		return ack()
	case admitDigest:
		o.count(outcomeDigested)
		return ack()
	}
	r := o.post(ctx, e)
	if !r.ack {
		o.agg.abandon(e, o.now())
	}
	return r
}

// post posts threat e once: it waits out the destination's hold, claims the
// alert, posts, and records it done.
func (o *output) post(ctx context.Context, e *event.Event) result {
	if wait := o.gate.Acquire(ctx); wait > 0 {
		o.log.Debug("destination held", "id", e.Event.ID, "for", wait)
		o.count(outcomeHeld)
		return retryIn(jitter(wait))
	}
	var c claim.Claim
	if o.claims != nil {
		var err error
		c, err = o.claims.Claim(ctx, o.sink.Name()+"/"+e.Event.ID)
		if err != nil {
			// Never post without a stored claim: wait for the ledger.
			o.gate.Cancelled()
			o.count(outcomeFailed)
			o.log.Warn("claiming alert, will retry", "id", e.Event.ID, "err", err)
			return retryIn(time.Second)
		}
		switch c.State {
		case claim.Done:
			o.log.Debug("alert posted already", "id", e.Event.ID)
			o.gate.Cancelled()
			o.count(outcomeDuplicate)
			return ack()
		case claim.Held:
			o.log.Debug("alert being posted elsewhere", "id", e.Event.ID, "until", c.Until)
			o.gate.Cancelled()
			o.count(outcomeClaimedElsewhere)
			return retryIn(c.Wait(o.now()) + 100*time.Millisecond)
		}
	}
	start := time.Now()
	ref, err := o.sink.Post(ctx, Alert(e))
	o.m.sendDur.WithLabelValues(o.sink.Name()).Observe(time.Since(start).Seconds())
	if err == nil {
		o.gate.Success()
		if o.claims != nil {
			if derr := o.claims.Done(ctx, c); derr != nil {
				// Posted: ack anyway. The claim's lease keeps a redelivery
				// from posting again until it runs out.
				o.log.Warn("alert posted but not recorded", "id", e.Event.ID, "err", derr)
			}
		}
		o.agg.posted(e, ref)
		o.count(outcomePosted)
		o.m.posts.WithLabelValues(o.sink.Name(), render.KindAlert).Inc()
		o.log.Info("alert posted", "id", e.Event.ID, "rule", ruleID(e), "severity", e.Whalewatch.Severity, "host", e.Host.Name)
		return ack()
	}
	if o.claims != nil {
		if rerr := o.claims.Release(context.WithoutCancel(ctx), c); rerr != nil {
			o.log.Debug("releasing claim", "id", e.Event.ID, "err", rerr)
		}
	}
	if d, ok := RetryAfter(err); ok {
		d = o.gate.RateLimited(ctx, d)
		o.count(outcomeRateLimited)
		o.log.Warn("destination rate limit, holding it", "for", d)
		return retryIn(jitter(d))
	}
	if bus.IsPermanent(err) {
		o.gate.Success() // it answered
		o.count(outcomeRejected)
		return deadLetter(err)
	}
	d := o.gate.Failed(ctx)
	o.count(outcomeFailed)
	if ctx.Err() == nil {
		o.log.Warn("posting failed, will retry", "id", e.Event.ID, "retry_in", d, "err", err)
	}
	return retryIn(jitter(d))
}

func ruleID(e *event.Event) string {
	if e.Rule == nil {
		return ""
	}
	return e.Rule.ID
}

// settle acks, naks or dead-letters m.
func (o *output) settle(ctx context.Context, m jetstream.Msg, r result) {
	switch {
	case r.ack:
		if err := m.Ack(); err != nil {
			o.log.Warn("ack failed; the message will be redelivered", "subject", m.Subject(), "err", err)
		}
	case r.dead != nil:
		o.deadLetter(ctx, m, r.dead)
	default:
		_ = m.NakWithDelay(r.delay)
	}
}

// deadLetter copies m to the output's dead-letter subject with the reason,
// as pkg/bus does, then terminates it; if the copy cannot be stored, m is
// retried instead.
func (o *output) deadLetter(ctx context.Context, m jetstream.Msg, cause error) {
	seq, delivered := "", ""
	if md, err := m.Metadata(); err == nil {
		seq = strconv.FormatUint(md.Sequence.Stream, 10)
		delivered = strconv.FormatUint(md.NumDelivered, 10)
	}
	reason := bus.ReasonPermanent
	if errors.Is(cause, event.ErrInvalid) {
		reason = bus.ReasonInvalid
	}
	durable := o.cfg.Durable + "-" + o.sink.Name()
	dl := nats.NewMsg(subject.DeadLetter(durable))
	dl.Data = m.Data()
	dl.Header.Set(bus.HeaderReason, reason)
	dl.Header.Set(bus.HeaderError, event.Truncate(cause.Error(), 1024))
	dl.Header.Set(bus.HeaderOriginalSubject, m.Subject())
	dl.Header.Set(bus.HeaderStreamSequence, seq)
	dl.Header.Set(bus.HeaderDeliveries, delivered)
	pubCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := o.js.PublishMsg(pubCtx, dl, jetstream.WithMsgID(durable+"-"+seq)); err != nil {
		o.log.Error("dead-lettering failed, will retry the message", "subject", m.Subject(), "err", err)
		_ = m.NakWithDelay(time.Second)
		return
	}
	_ = m.Term()
	o.log.Warn("message dead-lettered", "subject", m.Subject(), "reason", reason, "err", event.Truncate(cause.Error(), 512))
}

// flushLoop sends the groups and digests that are due, every tick.
func (o *output) flushLoop(ctx context.Context) {
	tick := min(max(o.cfg.Window/10, 50*time.Millisecond), time.Second)
	if o.cfg.DigestEvery > 0 {
		tick = min(tick, max(o.cfg.DigestEvery/10, 50*time.Millisecond))
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			// Deliver what is due now, once, so that a clean shutdown keeps
			// its counts.
			o.flush(context.WithoutCancel(ctx), o.now().Add(o.cfg.Window+o.cfg.DigestEvery))
			return
		case <-t.C:
			o.flush(ctx, o.now())
		}
	}
}

func (o *output) flush(ctx context.Context, now time.Time) {
	for _, p := range o.agg.due(now) {
		if o.gate.Acquire(ctx) > 0 {
			o.agg.failed(p, now) // held: they wait in the next digest
			continue
		}
		ctx, cancel := context.WithTimeout(ctx, o.cfg.Slack.Timeout+time.Second)
		var err error
		if p.ref != "" && o.updater != nil {
			err = o.updater.Update(ctx, p.ref, p.n)
		} else {
			_, err = o.sink.Post(ctx, p.n)
		}
		cancel()
		if err != nil {
			if d, ok := RetryAfter(err); ok {
				o.gate.RateLimited(ctx, d)
			} else if !bus.IsPermanent(err) {
				o.gate.Failed(ctx)
			} else {
				o.gate.Success()
			}
			o.log.Warn("posting summary failed; its threats go into the next digest", "kind", p.n.Kind, "err", err)
			if !bus.IsPermanent(err) || p.n.Kind != render.KindDigest {
				o.agg.failed(p, now)
			}
			continue
		}
		o.gate.Success()
		kind := p.n.Kind
		if p.ref != "" {
			kind = "update"
		}
		o.m.posts.WithLabelValues(o.sink.Name(), kind).Inc()
	}
}
