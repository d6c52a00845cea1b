package notifier

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/subject"
	"github.com/whalewatch/whalewatch/testkit/natstest"
	"github.com/whalewatch/whalewatch/testkit/slackstub"
)

const wait = 10 * time.Second

// defaults returns the configuration the flags give, for tests to adjust.
func defaults(t *testing.T) Config {
	t.Helper()
	var cfg Config
	fs := flag.NewFlagSet("notifier", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	require.NoError(t, fs.Parse(nil))
	cfg.Admin.Addr = ""
	return cfg
}

// harness runs a Notifier on an in-process NATS server against a Slack stub.
type harness struct {
	t     *testing.T
	js    jetstream.JetStream
	slack *slackstub.Server
	pub   *bus.EventPublisher
	n     *Notifier
	cfg   Config
}

// start runs a notifier posting to the stub's webhook, after adjust changed
// its configuration; it stops when the test ends.
func start(t *testing.T, adjust func(*Config)) *harness {
	t.Helper()
	h := &harness{t: t, slack: slackstub.New(t), cfg: defaults(t)}
	h.cfg.Slack.WebhookURL = h.slack.WebhookURL()
	h.cfg.Slack.Timeout = 5 * time.Second
	if adjust != nil {
		adjust(&h.cfg)
	}
	require.NoError(t, h.cfg.Validate())

	_, h.js = natstest.Connect(t, natstest.Server(t))
	ctx := t.Context()
	require.NoError(t, bus.EnsureStreams(ctx, h.js, h.cfg.NATS.Streams))
	ledger, err := OpenLedger(ctx, h.js, h.cfg.DedupTTL, 1)
	require.NoError(t, err)
	sink, err := NewSink(h.cfg, io.Discard)
	require.NoError(t, err)
	t.Cleanup(func() { _ = sink.Close(context.Background()) })
	h.pub = bus.NewEventPublisher(h.js, prometheus.NewRegistry())
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	h.n = New(h.js, ledger, sink, h.cfg, log, prometheus.NewRegistry())

	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.n.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return h
}

// publish publishes e on its threat subject and returns its stream sequence.
// msgID is the Nats-Msg-Id; empty means event.id, as the detector does.
func (h *harness) publish(e *event.Event, msgID string) uint64 {
	h.t.Helper()
	if msgID == "" {
		msgID = e.Event.ID
	}
	data, err := event.Marshal(e)
	require.NoError(h.t, err)
	msg := nats.NewMsg(subject.ForThreat(e))
	msg.Data = data
	ack, err := h.js.PublishMsg(h.t.Context(), msg, jetstream.WithMsgID(msgID))
	require.NoError(h.t, err)
	return ack.Sequence
}

// settled waits until the consumer has acked or terminated every message up
// to stream sequence seq.
func (h *harness) settled(seq uint64) {
	h.t.Helper()
	natstest.Eventually(h.t, wait, func() bool {
		c, err := h.js.Consumer(h.t.Context(), bus.StreamThreats, h.cfg.Durable)
		if err != nil {
			return false
		}
		info, err := c.Info(h.t.Context())
		return err == nil && info.AckFloor.Stream >= seq
	}, "consumer did not settle sequence %d", seq)
}

// deadLetter waits for the consumer's last dead letter and returns it.
func (h *harness) deadLetter() *jetstream.RawStreamMsg {
	h.t.Helper()
	var dl *jetstream.RawStreamMsg
	natstest.Eventually(h.t, wait, func() bool {
		s, err := h.js.Stream(h.t.Context(), bus.StreamDeadLetter)
		if err != nil {
			return false
		}
		dl, err = s.GetLastMsgForSubject(h.t.Context(), subject.DeadLetter(h.cfg.Durable))
		return err == nil
	}, "no dead letter")
	return dl
}

func (h *harness) outcome(o string) float64 {
	return testutil.ToFloat64(h.n.alerts.WithLabelValues(o))
}

func TestPostsThreatOnce(t *testing.T) {
	t.Parallel()
	h := start(t, nil)
	e := threat(event.NewID(), event.SeverityHigh)
	h.publish(e, "")

	natstest.Eventually(t, wait, func() bool { return len(h.slack.Messages()) == 1 }, "threat not posted")
	m := h.slack.Messages()[0]
	require.Equal(t, slackstub.EndpointWebhook, m.Endpoint)
	for _, want := range []string{e.Container.Name, "nginx:1.27", "docker-host-1", "suspicious-tool-netcat", "Netcat executed in a container", "```nc -l -p 4444```", e.Event.ID} {
		require.True(t, m.Mentions(want), "message lacks %q:\n%s", want, m.AllText())
	}
	require.Equal(t, "header", m.Blocks[0].Type)

	// The same threat again, past JetStream's duplicate window (another
	// Nats-Msg-Id), as after a lost ack or from another replica's retry.
	seq := h.publish(e, "republished-"+e.Event.ID)
	h.settled(seq)
	require.Equal(t, 1, len(h.slack.Messages()), "the ledger keeps a threat from being posted twice")
	require.Equal(t, 1.0, h.outcome(outcomePosted))
	require.Equal(t, 1.0, h.outcome(outcomeDuplicate))

	// A different threat is posted.
	h.publish(threat(event.NewID(), event.SeverityHigh), "")
	natstest.Eventually(t, wait, func() bool { return len(h.slack.Messages()) == 2 }, "second threat not posted")
}

func TestRetriesAfterServerError(t *testing.T) {
	t.Parallel()
	h := start(t, nil)
	h.slack.FailNext(1, http.StatusInternalServerError)
	e := threat(event.NewID(), event.SeverityCritical)
	seq := h.publish(e, "")
	h.settled(seq)
	require.Equal(t, 1, len(h.slack.Messages()), "posted once after the retry")
	require.Equal(t, 2, h.slack.Requests())
	require.Equal(t, 1.0, h.outcome(outcomeFailed))
	require.Equal(t, 1.0, h.outcome(outcomePosted))
}

func TestHonoursRetryAfter(t *testing.T) {
	t.Parallel()
	h := start(t, nil)
	h.slack.FailNext(1, http.StatusTooManyRequests) // Retry-After: 1
	seq := h.publish(threat(event.NewID(), event.SeverityHigh), "")
	h.settled(seq)
	msgs, rejected := h.slack.Messages(), h.slack.Rejections()
	require.Equal(t, 1, len(msgs))
	require.Equal(t, 1, len(rejected))
	require.GreaterOrEqual(t, msgs[0].At.Sub(rejected[0].At), time.Second, "posted again before Retry-After passed")
	require.Equal(t, 1.0, h.outcome(outcomeRateLimited))
}

func TestDeadLettersRejectedPayload(t *testing.T) {
	t.Parallel()
	h := start(t, nil)
	h.slack.RejectNext(1, "invalid_blocks")
	e := threat(event.NewID(), event.SeverityHigh)
	h.publish(e, "")

	dl := h.deadLetter()
	require.Equal(t, bus.ReasonPermanent, dl.Header.Get(bus.HeaderReason))
	require.Contains(t, dl.Header.Get(bus.HeaderError), "invalid_blocks")
	require.Equal(t, subject.ForThreat(e), dl.Header.Get(bus.HeaderOriginalSubject))
	require.Zero(t, len(h.slack.Messages()))
	require.Equal(t, 1, h.slack.Requests(), "a rejected payload is not retried")

	posted, err := h.n.ledger.Posted(t.Context(), e.Event.ID)
	require.NoError(t, err)
	require.False(t, posted)
}

func TestHostileCommandLine(t *testing.T) {
	t.Parallel()
	h := start(t, nil)
	e := threat(event.NewID(), event.SeverityHigh)
	e.Process.CommandLine = "<!channel> ``` $(rm -rf /) " + strings.Repeat("<@U123>", 10<<10/7)
	e.Container.Name = "<!here>"
	e.Bound() // as the detector does: 10 KiB becomes event.MaxCommandLine
	h.publish(e, "")

	natstest.Eventually(t, wait, func() bool { return len(h.slack.Messages()) == 1 }, "hostile threat not posted")
	m := h.slack.Messages()[0]
	raw := string(m.Raw)
	for _, bad := range []string{"<!channel>", "<!here>", "<@U123>"} {
		require.NotContains(t, raw, bad)
	}
	require.True(t, m.Mentions("```&lt;!channel&gt; `\u200b`\u200b` $(rm -rf /) &lt;@U123&gt;"), m.AllText())
	require.True(t, m.Mentions("&lt;!here&gt;"))
	require.Less(t, len(raw), 12<<10, "the post is bounded")
}

func TestMinSeverity(t *testing.T) {
	t.Parallel()
	h := start(t, func(c *Config) { c.MinSeverity = event.SeverityHigh })
	low := threat(event.NewID(), event.SeverityMedium)
	high := threat(event.NewID(), event.SeverityHigh)
	h.publish(low, "")
	h.publish(high, "")

	natstest.Eventually(t, wait, func() bool { return len(h.slack.Messages()) == 1 }, "high threat not posted")
	require.True(t, h.slack.Messages()[0].Mentions(high.Event.ID))
	require.Zero(t, len(h.slack.Mentioning(low.Event.ID)))
	c, err := h.js.Consumer(t.Context(), bus.StreamThreats, h.cfg.Durable)
	require.NoError(t, err)
	info, err := c.Info(t.Context())
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"whalewatch.threats.high.>", "whalewatch.threats.critical.>"}, info.Config.FilterSubjects)
}

func TestDeadLettersNonThreat(t *testing.T) {
	t.Parallel()
	h := start(t, nil)
	e := threat(event.NewID(), event.SeverityHigh)
	e.Event.Kind = event.KindEvent
	h.publish(e, "")
	dl := h.deadLetter()
	require.Contains(t, dl.Header.Get(bus.HeaderError), "not a threat")
	require.Zero(t, len(h.slack.Messages()))
}

// TestRunWebAPI runs the whole service as main does, posting with a bot token.
func TestRunWebAPI(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, token string
		posted      bool
	}{
		{"right token", slackstub.Token, true},
		{"wrong token", "xoxb-wrong", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := natstest.Server(t)
			_, js := natstest.Connect(t, srv)
			stub := slackstub.New(t)
			cfg := defaults(t)
			cfg.NATS.URL = srv.ClientURL()
			cfg.Slack = SlackConfig{BotToken: tt.token, Channel: "#" + slackstub.ChannelName, APIURL: stub.APIURL(), Timeout: 5 * time.Second}
			require.NoError(t, cfg.Validate())

			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				done <- Run(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
			}()
			defer func() {
				cancel()
				require.NoError(t, <-done)
			}()

			h := &harness{t: t, js: js, slack: stub, cfg: cfg}
			natstest.Eventually(t, wait, func() bool {
				_, err := js.KeyValue(t.Context(), LedgerBucket)
				return err == nil
			}, "Run did not create the streams and the ledger")
			e := threat(event.NewID(), event.SeverityHigh)
			h.publish(e, "")
			if tt.posted {
				natstest.Eventually(t, wait, func() bool { return len(stub.Messages()) == 1 }, "threat not posted")
				m := stub.Messages()[0]
				require.Equal(t, slackstub.EndpointPostMessage, m.Endpoint)
				require.Equal(t, slackstub.ChannelID, m.Channel)
				require.True(t, m.Mentions(e.Event.ID))
				require.Equal(t, "header", m.Blocks[0].Type)
				return
			}
			dl := h.deadLetter()
			require.Contains(t, dl.Header.Get(bus.HeaderError), "invalid_auth")
			require.NotContains(t, dl.Header.Get(bus.HeaderError), tt.token)
			require.Zero(t, len(stub.Messages()))
		})
	}
}
