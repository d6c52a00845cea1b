package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/subject"
)

// Handler does a consumer's work on a batch of events. It returns one error
// per event, in order: nil when the event's effect happened (the message is
// acked), a Permanent error when it never can (dead-lettered), any other error
// when it may succeed later (nak'ed and redelivered after a delay). A handler
// that fails the whole batch returns the same error for each event.
//
// The batch slice and its events belong to the handler until it returns.
type Handler interface {
	Handle(ctx context.Context, batch []*event.Event) []error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, batch []*event.Event) []error

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, batch []*event.Event) []error { return f(ctx, batch) }

// Each adapts a per-event function to Handler.
func Each(f func(ctx context.Context, e *event.Event) error) Handler {
	return HandlerFunc(func(ctx context.Context, batch []*event.Event) []error {
		errs := make([]error, len(batch))
		for i, e := range batch {
			errs[i] = f(ctx, e)
		}
		return errs
	})
}

// ErrPermanent marks an error that retrying cannot fix.
var ErrPermanent = errors.New("permanent failure")

// Permanent wraps err so that the consumer dead-letters the message instead of
// retrying it.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrPermanent, err)
}

// IsPermanent reports whether err can never succeed on retry.
func IsPermanent(err error) bool {
	return errors.Is(err, ErrPermanent) || errors.Is(err, event.ErrInvalid)
}

// Headers set on dead letters, beside the original payload.
const (
	HeaderReason          = "Whalewatch-Reason"
	HeaderError           = "Whalewatch-Error"
	HeaderOriginalSubject = "Whalewatch-Original-Subject"
	HeaderStreamSequence  = "Whalewatch-Stream-Sequence"
	HeaderDeliveries      = "Whalewatch-Deliveries"
)

// Dead-letter reasons, the values of HeaderReason and of the reason label.
const (
	ReasonInvalid    = "invalid"     // the payload is not a valid event
	ReasonPermanent  = "permanent"   // the handler said it can never succeed
	ReasonMaxDeliver = "max_deliver" // transient failures until MaxDeliver
)

// ConsumerConfig describes one durable consumer.
type ConsumerConfig struct {
	Stream         string
	Durable        string
	FilterSubjects []string
	// BatchSize is the most events handed to the handler at once.
	BatchSize int
	// FlushInterval is how long a batch may wait to fill once its first event
	// arrived. Zero hands over what is there without waiting.
	FlushInterval time.Duration
	// AckWait is how long the server waits for an ack before redelivering;
	// 5 s by default. A live consumer sends in-progress acks for every
	// message it holds (handled or buffered), so AckWait is only how long
	// a message waits that a crashed replica held, or that a consumer
	// leader sent just before it died: the failover's delay.
	AckWait time.Duration
	// MaxDeliver bounds deliveries of one message (-1: unlimited, for sinks
	// that must outlast an outage of what they write to).
	MaxDeliver int
	// MaxAckPending bounds messages in flight.
	MaxAckPending int
	// MaxBackoff caps the redelivery delay after transient failures.
	MaxBackoff time.Duration
	// DrainTimeout bounds the work done on buffered messages at shutdown.
	DrainTimeout time.Duration
}

func (c *ConsumerConfig) defaults() {
	if c.BatchSize <= 0 {
		c.BatchSize = 1
	}
	if c.AckWait <= 0 {
		c.AckWait = 5 * time.Second
	}
	if c.MaxDeliver == 0 {
		c.MaxDeliver = 10
	}
	if c.MaxAckPending <= 0 {
		c.MaxAckPending = max(1000, 4*c.BatchSize)
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 30 * time.Second
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 10 * time.Second
	}
}

// ConsumerMetrics are the metrics of every consumer in a process.
type ConsumerMetrics struct {
	messages    *prometheus.CounterVec
	deadLetters *prometheus.CounterVec
	duration    *prometheus.HistogramVec
}

// NewConsumerMetrics registers consumer metrics on reg.
func NewConsumerMetrics(reg prometheus.Registerer) *ConsumerMetrics {
	m := &ConsumerMetrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whalewatch_bus_consumed_total",
			Help: "Messages consumed, by consumer and outcome (ack, nak, dead_letter).",
		}, []string{"consumer", "outcome"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whalewatch_bus_dead_letters_total",
			Help: "Messages sent to the dead-letter subject, by consumer and reason.",
		}, []string{"consumer", "reason"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "whalewatch_bus_handle_seconds",
			Help:    "Time the handler took per batch.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
		}, []string{"consumer"}),
	}
	reg.MustRegister(m.messages, m.deadLetters, m.duration)
	return m
}

// JetStream is the part of JetStream a consumer needs.
type JetStream interface {
	Publisher
	ConsumerManager
}

// Consumer runs one durable consumer.
type Consumer struct {
	cfg     ConsumerConfig
	js      JetStream
	handler Handler
	metrics *ConsumerMetrics
	log     *slog.Logger
	// outcomes are metrics.messages of this consumer by outcome, looked up
	// once: settling runs for every message.
	outcomes map[string]prometheus.Counter
	// held is what this consumer pulled and has not settled yet.
	held *held
}

// NewConsumer returns a consumer; Run starts it.
func NewConsumer(js JetStream, cfg ConsumerConfig, h Handler, m *ConsumerMetrics, log *slog.Logger) *Consumer {
	cfg.defaults()
	outcomes := map[string]prometheus.Counter{}
	for _, o := range []string{outcomeAck, outcomeNak, outcomeDeadLetter} {
		outcomes[o] = m.messages.WithLabelValues(cfg.Durable, o)
	}
	return &Consumer{cfg: cfg, js: js, handler: h, metrics: m, log: log.With("consumer", cfg.Durable), outcomes: outcomes,
		held: newHeld(cfg.AckWait)}
}

// Run creates (or updates) the durable consumer, retrying until NATS answers,
// and handles messages until ctx ends. Then it stops pulling, handles what was
// already delivered (for at most DrainTimeout) and returns nil.
func (c *Consumer) Run(ctx context.Context) error {
	cons, err := EnsureConsumer(ctx, c.js, c.cfg.Stream, c.jetStreamConfig(), func(err error) {
		c.log.Warn("creating consumer, will retry", "stream", c.cfg.Stream, "err", err)
	})
	if err != nil {
		return nil // ctx ended before NATS answered: nothing to drain
	}

	// Pulled messages wait in a buffer of a few batches, all of them held
	// (in-progress acks) until settled.
	buf := max(2*c.cfg.BatchSize, 64)
	queue := make(chan jetstream.Msg, buf)
	defer c.held.stop()
	go c.fetch(ctx, cons, queue, buf)
	// Work on pulled messages may outlive ctx by DrainTimeout.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(c.cfg.DrainTimeout, cancelWork) })
	defer stop()

	c.log.Info("consuming", "stream", c.cfg.Stream, "filter", c.cfg.FilterSubjects)
	batch := make([]jetstream.Msg, 0, c.cfg.BatchSize)
	flush := time.NewTimer(time.Hour)
	flush.Stop()
	for {
		msg, ok := <-queue
		if !ok {
			c.log.Info("consumer drained and stopped")
			return nil
		}
		batch = append(batch[:0], msg)
		if len(batch) < c.cfg.BatchSize {
			flush.Reset(c.cfg.FlushInterval)
		fill:
			for len(batch) < c.cfg.BatchSize {
				select {
				case m, ok := <-queue:
					if !ok {
						break fill
					}
					batch = append(batch, m)
					continue
				default:
				}
				// Nothing buffered: wait for the batch to fill until
				// the flush interval ends (at once when it is zero).
				select {
				case m, ok := <-queue:
					if !ok {
						break fill
					}
					batch = append(batch, m)
				case <-flush.C:
					break fill
				}
			}
			flush.Stop()
		}
		c.process(work, batch)
	}
}

// fetch pulls messages into queue, holding each, until ctx ends; then it
// closes queue. Each pull asks for what the buffer has room for, once half
// of it is, so that no more than buf messages are ever held (a slow handler
// never has a flood waiting behind it), and lasts at most 10 s. The server sends an
// idle heartbeat every second to a waiting pull, so that a pull parked on
// a consumer leader that died (a NATS node went away) is noticed after two
// missed beats and made again to the new leader.
func (c *Consumer) fetch(ctx context.Context, cons jetstream.Consumer, queue chan<- jetstream.Msg, buf int) {
	defer close(queue)
	delay := firstPullRetry
	for ctx.Err() == nil {
		// Like nats.go's pull iterator, pull again once half the buffer
		// is free: a backlog then goes in pulls of at least half a
		// buffer, rather than one small pull per message handled.
		n := buf - c.held.len()
		if n < max(buf/2, 1) {
			select {
			case <-ctx.Done():
			case <-c.held.space:
			}
			continue
		}
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		mb, err := cons.Fetch(n, jetstream.FetchContext(fctx), jetstream.FetchHeartbeat(time.Second))
		err = c.take(mb, err, func(m jetstream.Msg) {
			queue <- m // room for it: queue holds only held messages
		})
		cancel()
		if err != nil && !fetchEnded(err) {
			delay = c.pullFailed(ctx, err, delay)
			continue
		}
		delay = firstPullRetry
	}
}

// firstPullRetry is the pause after a pull that failed; it doubles with
// each failure that follows, up to maxPullRetry.
const (
	firstPullRetry = 100 * time.Millisecond
	maxPullRetry   = 2 * time.Second
)

// take holds every message of a pull (until it is settled) and passes it
// to each; it returns what ended the pull.
func (c *Consumer) take(mb jetstream.MessageBatch, err error, each func(jetstream.Msg)) error {
	if err != nil {
		return err
	}
	for m := range mb.Messages() {
		c.held.add(m)
		each(m)
	}
	return mb.Error()
}

// pullFailed waits delay after a pull failed (not just ended), and returns
// the pause after the next failure.
func (c *Consumer) pullFailed(ctx context.Context, err error, delay time.Duration) time.Duration {
	if ctx.Err() == nil {
		c.log.Debug("fetching, will retry", "err", err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(delay):
	}
	return min(2*delay, maxPullRetry)
}

// fetchEnded reports whether a fetch's error only says that the pull ended
// (expired, or its leader went silent): the next pull follows at once.
func fetchEnded(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrNoMessages) ||
		errors.Is(err, jetstream.ErrNoHeartbeat)
}

// jetStreamConfig is the durable consumer's JetStream configuration.
func (c *Consumer) jetStreamConfig() jetstream.ConsumerConfig {
	cfg := jetstream.ConsumerConfig{
		Durable:        c.cfg.Durable,
		FilterSubjects: c.cfg.FilterSubjects,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        c.cfg.AckWait,
		MaxDeliver:     c.cfg.MaxDeliver,
		MaxAckPending:  c.cfg.MaxAckPending,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	}
	if len(cfg.FilterSubjects) == 1 {
		// nats.go puts a single filter in the request's subject, where
		// NATS permissions can pin it (deploy/nats: a collector may
		// consume only its own host's requests).
		cfg.FilterSubject, cfg.FilterSubjects = cfg.FilterSubjects[0], nil
	}
	return cfg
}

// process decodes, handles and settles one batch.
func (c *Consumer) process(ctx context.Context, msgs []jetstream.Msg) {
	defer c.release(msgs)
	events := make([]*event.Event, 0, len(msgs))
	handled := make([]jetstream.Msg, 0, len(msgs))
	for _, m := range msgs {
		e, err := event.Decode(m.Data())
		if err != nil {
			c.deadLetter(ctx, m, ReasonInvalid, err)
			continue
		}
		events = append(events, e)
		handled = append(handled, m)
	}
	if len(events) == 0 {
		return
	}
	start := time.Now()
	errs := c.handler.Handle(ctx, events)
	c.metrics.duration.WithLabelValues(c.cfg.Durable).Observe(time.Since(start).Seconds())
	if len(errs) != len(events) {
		// A handler bug; retry everything rather than guess.
		err := fmt.Errorf("handler returned %d results for %d events", len(errs), len(events))
		c.log.Error("handler contract violated", "err", err)
		errs = make([]error, len(events))
		for i := range errs {
			errs[i] = err
		}
	}
	warn := true // one retry line per batch is enough
	for i, m := range handled {
		if c.settle(ctx, m, errs[i], warn) == outcomeNak {
			warn = false
		}
	}
}

// release stops holding msgs, once they are settled.
func (c *Consumer) release(msgs []jetstream.Msg) {
	for _, m := range msgs {
		c.held.done(m)
	}
}

// Outcomes of settling a message, the values of the outcome label.
const (
	outcomeAck        = "ack"
	outcomeNak        = "nak"
	outcomeDeadLetter = "dead_letter"
)

// settle acks, naks or dead-letters m as err says and returns the outcome. A
// retry is logged only when warn is set.
func (c *Consumer) settle(ctx context.Context, m jetstream.Msg, err error, warn bool) string {
	if err == nil {
		if aerr := m.Ack(); aerr != nil {
			c.log.Warn("ack failed; the message will be redelivered", "subject", m.Subject(), "err", aerr)
		}
		c.outcomes[outcomeAck].Inc()
		return outcomeAck
	}
	if IsPermanent(err) {
		return c.deadLetter(ctx, m, ReasonPermanent, err)
	}
	delivered := uint64(1)
	if md, merr := m.Metadata(); merr == nil {
		delivered = md.NumDelivered
	}
	if c.cfg.MaxDeliver > 0 && delivered >= uint64(c.cfg.MaxDeliver) {
		return c.deadLetter(ctx, m, ReasonMaxDeliver, err)
	}
	delay := Backoff(delivered, c.cfg.MaxBackoff)
	if warn && ctx.Err() == nil {
		c.log.Warn("handling failed, will retry", "subject", m.Subject(), "deliveries", delivered, "retry_in", delay, "err", err)
	}
	_ = m.NakWithDelay(delay)
	c.outcomes[outcomeNak].Inc()
	return outcomeNak
}

// deadLetter copies m to the consumer's dead-letter subject with the reason,
// then terminates it. If the copy cannot be stored, m is nak'ed instead: a
// message is never dropped silently. It returns the outcome.
func (c *Consumer) deadLetter(ctx context.Context, m jetstream.Msg, reason string, cause error) string {
	seq := ""
	delivered := ""
	if md, err := m.Metadata(); err == nil {
		seq = strconv.FormatUint(md.Sequence.Stream, 10)
		delivered = strconv.FormatUint(md.NumDelivered, 10)
	}
	dl := nats.NewMsg(subject.DeadLetter(c.cfg.Durable))
	dl.Data = m.Data()
	dl.Header.Set(HeaderReason, reason)
	dl.Header.Set(HeaderError, event.Truncate(cause.Error(), 1024))
	dl.Header.Set(HeaderOriginalSubject, m.Subject())
	dl.Header.Set(HeaderStreamSequence, seq)
	dl.Header.Set(HeaderDeliveries, delivered)
	pubCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := c.js.PublishMsg(pubCtx, dl, jetstream.WithMsgID(c.cfg.Durable+"-"+seq)); err != nil {
		c.log.Error("dead-lettering failed, will retry the message", "subject", m.Subject(), "err", err)
		_ = m.NakWithDelay(time.Second)
		c.outcomes[outcomeNak].Inc()
		return outcomeNak
	}
	_ = m.Term()
	c.log.Warn("message dead-lettered", "subject", m.Subject(), "reason", reason, "err", event.Truncate(cause.Error(), 512))
	c.metrics.deadLetters.WithLabelValues(c.cfg.Durable, reason).Inc()
	c.outcomes[outcomeDeadLetter].Inc()
	return outcomeDeadLetter
}

// Backoff is the redelivery delay after the n-th failed delivery: 500 ms
// doubling each time, capped at max.
func Backoff(n uint64, max time.Duration) time.Duration {
	d := 500 * time.Millisecond
	for i := uint64(1); i < n && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}
