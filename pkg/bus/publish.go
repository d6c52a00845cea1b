package bus

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// Publisher is the part of JetStream that publishing needs.
type Publisher interface {
	PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error)
}

// EventPublisher publishes events and waits for JetStream to store them.
type EventPublisher struct {
	js        Publisher
	published *prometheus.CounterVec
	agent     *event.Agent // completes every event when set (CompleteAs)
}

// PublishOption configures an EventPublisher.
type PublishOption func(*EventPublisher)

// CompleteAs makes the publisher complete every event it publishes with
// event.Complete, agent being the service that produced it: ecs.version,
// agent, observer, related.* and process.entity_id travel with the event.
// The indexer stores a completed event as it arrives, without decoding and
// encoding it again (its fast path; whalewatch_indexer_prepared_total{path}
// counts both paths), so every production publisher sets it.
func CompleteAs(agent event.Agent) PublishOption {
	return func(p *EventPublisher) { p.agent = &agent }
}

// NewEventPublisher returns a publisher that counts its outcomes on reg as
// whalewatch_bus_published_total{outcome}.
func NewEventPublisher(js Publisher, reg prometheus.Registerer, opts ...PublishOption) *EventPublisher {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "whalewatch_bus_published_total",
		Help: "Events published to JetStream, by outcome (stored, duplicate, error).",
	}, []string{"outcome"})
	reg.MustRegister(c)
	p := &EventPublisher{js: js, published: c}
	for _, o := range opts {
		o(p)
	}
	return p
}

// Publish encodes e (completing it first when the publisher was made with
// CompleteAs; e then belongs to the publisher while it runs) and publishes it
// on subj with Nats-Msg-Id set to event.id, so that a retry within the
// stream's duplicate window is stored once. It returns when JetStream has
// stored the event or failed to.
func (p *EventPublisher) Publish(ctx context.Context, subj string, e *event.Event) error {
	if p.agent != nil {
		e.Complete(p.agent)
	}
	data, err := event.Marshal(e)
	if err != nil {
		p.published.WithLabelValues("error").Inc()
		return err
	}
	msg := nats.NewMsg(subj)
	msg.Data = data
	ack, err := p.js.PublishMsg(ctx, msg, jetstream.WithMsgID(e.Event.ID))
	if err != nil {
		p.published.WithLabelValues("error").Inc()
		return fmt.Errorf("publishing %s to %s: %w", e.Event.ID, subj, err)
	}
	if ack.Duplicate {
		p.published.WithLabelValues("duplicate").Inc()
		return nil
	}
	p.published.WithLabelValues("stored").Inc()
	return nil
}
