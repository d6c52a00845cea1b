package notifier

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/subject"
	"github.com/whalewatch/whalewatch/services/notifier/internal/gate"
	"github.com/whalewatch/whalewatch/services/notifier/internal/render"
	"github.com/whalewatch/whalewatch/testkit/natstest"
	"github.com/whalewatch/whalewatch/testkit/slackstub"
)

const wait = 20 * time.Second

// fast are flags that keep the tests' windows short.
var fast = map[string]string{
	"notify-window": "1s", "notify-digest-interval": "500ms", "notify-ack-wait": "2s", "slack-timeout": "2s",
}

func with(base map[string]string, kv ...string) map[string]string {
	out := map[string]string{}
	for k, v := range base {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

// counted is how many threats the stub's messages account for.
func counted(s *slackstub.Server) int {
	n := 0
	for _, m := range s.Messages() {
		n += threatsIn(m)
	}
	return n
}

// consumerInfo is the info of durable, or nil.
func (sc *scenario) consumerInfo(durable string) *jetstream.ConsumerInfo {
	c, err := sc.js.Consumer(sc.tb.Context(), bus.StreamThreats, durable)
	if err != nil {
		return nil
	}
	info, err := c.Info(sc.tb.Context())
	if err != nil {
		return nil
	}
	return info
}

// drained waits until durable has no pending or unacked message.
func (sc *scenario) drained(durable string) {
	sc.tb.Helper()
	natstest.Eventually(sc.tb, wait, func() bool {
		i := sc.consumerInfo(durable)
		return i != nil && i.NumPending == 0 && i.NumAckPending == 0
	}, "consumer %s did not drain", durable)
}

func TestPostsThreatOnce(t *testing.T) {
	t.Parallel()
	sc := newScenario(t, fast)
	sc.start(nil)
	e := threat(event.NewID(), event.SeverityHigh)
	e.Whalewatch.Response = &event.Response{Action: "pause", DryRun: true}
	sc.publish(e)

	natstest.Eventually(t, wait, func() bool { return len(sc.slack.Messages()) == 1 }, "threat not posted")
	m := sc.slack.Messages()[0]
	require.Equal(t, slackstub.EndpointWebhook, m.Endpoint)
	require.Equal(t, "none", m.Parse)
	require.Len(t, m.Attachments, 1)
	require.Equal(t, render.Color(event.SeverityHigh), m.Attachments[0].Color)
	require.Equal(t, "header", m.Attachments[0].Blocks[0].Type)
	for _, want := range []string{e.Container.Name, "nginx:1.27", "docker-host-1", "suspicious-tool-netcat", "Netcat executed in a container", "```nc -l -p 4444```", e.Event.ID, "pause (proposed, dry run)"} {
		require.True(t, m.Mentions(want), "message lacks %q:\n%s", want, m.AllText())
	}

	// The same threat again, past JetStream's duplicate window (another
	// Nats-Msg-Id), as after a lost ack: the ledger says it is done.
	data, err := event.Marshal(e)
	require.NoError(t, err)
	_, err = sc.js.Publish(t.Context(), subject.ForThreat(e), data, jetstream.WithMsgID("again-"+e.Event.ID))
	require.NoError(t, err)
	sc.drained("notifier-slack-webhook-high")
	require.Len(t, sc.slack.Messages(), 1, "the ledger keeps a threat from being posted twice")
}

func TestRetriesAfterServerError(t *testing.T) {
	t.Parallel()
	sc := newScenario(t, fast)
	sc.start(nil)
	sc.slack.FailNext(1, http.StatusInternalServerError)
	sc.publish(threat(event.NewID(), event.SeverityCritical))
	natstest.Eventually(t, wait, func() bool { return len(sc.slack.Messages()) == 1 }, "not posted after the 500")
	require.Equal(t, 2, sc.slack.Requests())
}

// TestRateLimitVariants: every 429 holds the destination for its
// Retry-After, whatever its form, on every replica.
func TestRateLimitVariants(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, retryAfter string
		hold             time.Duration
	}{
		{"integer", "2", 2 * time.Second},
		{"fraction", "1.5", 1500 * time.Millisecond},
		{"http date", "date+3", 2 * time.Second}, // HTTP dates have whole seconds
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			sc := newScenario(t, fast)
			sc.start(nil)
			sc.start(nil) // a second replica shares the hold
			ra := tt.retryAfter
			if ra == "date+3" {
				ra = time.Now().Add(3 * time.Second).UTC().Format(http.TimeFormat)
			}
			sc.slack.SetRetryAfter(ra)
			sc.slack.FailNext(1, http.StatusTooManyRequests)
			es := distinct(6, event.SeverityHigh)
			sc.publish(es[0])
			natstest.Eventually(t, wait, func() bool { return len(sc.slack.Rejections()) == 1 }, "no 429")
			// The hold reaches the other replica through KV; a post racing
			// with the 429 by a few milliseconds is not what this tests.
			natstest.Eventually(t, wait, func() bool {
				kv, err := sc.js.KeyValue(t.Context(), gate.Bucket)
				if err != nil {
					return false
				}
				_, err = kv.Get(t.Context(), DestSlackWebhook)
				return err == nil
			}, "the hold was not shared")
			sc.publish(es[1:]...)
			waitPosted(t, sc, es, wait)
			rejected := sc.slack.Rejections()[0].At
			for _, m := range sc.slack.Messages() {
				require.GreaterOrEqual(t, m.At.Sub(rejected), tt.hold-100*time.Millisecond, "posted during the hold")
			}
			require.Equal(t, len(es)+1, sc.slack.Requests(), "nothing was sent during the hold")
		})
	}
}

func TestDeadLettersRejectedPayload(t *testing.T) {
	t.Parallel()
	sc := newScenario(t, fast)
	sc.start(nil)
	sc.slack.RejectNext(1, "invalid_blocks")
	e := threat(event.NewID(), event.SeverityHigh)
	sc.publish(e)
	var dl *jetstream.RawStreamMsg
	natstest.Eventually(t, wait, func() bool {
		s, err := sc.js.Stream(t.Context(), bus.StreamDeadLetter)
		if err != nil {
			return false
		}
		dl, err = s.GetLastMsgForSubject(t.Context(), subject.DeadLetter("notifier-slack-webhook"))
		return err == nil
	}, "no dead letter")
	require.Equal(t, bus.ReasonPermanent, dl.Header.Get(bus.HeaderReason))
	require.Contains(t, dl.Header.Get(bus.HeaderError), "invalid_blocks")
	require.Equal(t, subject.ForThreat(e), dl.Header.Get(bus.HeaderOriginalSubject))
	require.Empty(t, sc.slack.Messages())
	require.Equal(t, 1, sc.slack.Requests(), "a rejected payload is not retried")
}

func TestHostileCommandLine(t *testing.T) {
	t.Parallel()
	sc := newScenario(t, fast)
	sc.start(nil)
	e := threat(event.NewID(), event.SeverityHigh)
	e.Process.CommandLine = "<!channel> ``` $(rm -rf /) @here *bold* \u2028 " + strings.Repeat("<@U123>", 10<<10/7)
	e.Container.Name = "<!here> :skull: :skull:"
	e.Bound()
	sc.publish(e)
	natstest.Eventually(t, wait, func() bool { return len(sc.slack.Messages()) == 1 }, "hostile threat not posted")
	m := sc.slack.Messages()[0]
	raw := string(m.Raw)
	for _, bad := range []string{"<!channel>", "<!here>", "<@U123>", "@here", ":skull:", "\u2028", `\u2028`} {
		require.NotContains(t, raw, bad)
	}
	require.True(t, m.Mentions("```&lt;!channel&gt; `\u200b`\u200b` $(rm -rf /) @\u200bhere *bold*"), m.AllText())
	require.Less(t, len(raw), 16<<10, "the post is bounded")
}

func TestMinSeverity(t *testing.T) {
	t.Parallel()
	sc := newScenario(t, with(fast, "min-severity", "high"))
	sc.start(nil)
	low := threat(event.NewID(), event.SeverityMedium)
	high := threat(event.NewID(), event.SeverityHigh)
	sc.publish(low, high)
	natstest.Eventually(t, wait, func() bool { return len(sc.slack.Messages()) == 1 }, "high threat not posted")
	require.True(t, sc.slack.Messages()[0].Mentions(high.Event.ID))
	require.Nil(t, sc.consumerInfo("notifier-slack-webhook-medium"), "no consumer below the minimum")
	require.NotNil(t, sc.consumerInfo("notifier-slack-webhook-critical"))
}

func TestDeadLettersNonThreat(t *testing.T) {
	t.Parallel()
	sc := newScenario(t, fast)
	sc.start(nil)
	e := threat(event.NewID(), event.SeverityHigh)
	e.Event.Kind = event.KindEvent
	sc.publish(e)
	natstest.Eventually(t, wait, func() bool {
		s, err := sc.js.Stream(t.Context(), bus.StreamDeadLetter)
		if err != nil {
			return false
		}
		dl, err := s.GetLastMsgForSubject(t.Context(), subject.DeadLetter("notifier-slack-webhook"))
		return err == nil && strings.Contains(dl.Header.Get(bus.HeaderError), "not a threat")
	}, "no dead letter")
	require.Empty(t, sc.slack.Messages())
}

// TestWebAPI posts with a bot token, updates a group's first message with
// its count, and dead-letters with a wrong token.
func TestWebAPI(t *testing.T) {
	t.Parallel()
	sc := newScenario(t, with(fast, "slack-webhook-url", "", "notify-window", "1s"))
	sc.flags["slack-bot-token"] = slackstub.Token
	sc.flags["slack-channel"] = "#" + slackstub.ChannelName
	sc.flags["slack-api-url"] = sc.slack.APIURL()
	delete(sc.flags, "slack-webhook-url")
	sc.start(nil)
	es := burst(5, 1, 1, event.SeverityHigh) // one rule on one container
	sc.publish(es...)
	natstest.Eventually(t, wait, func() bool {
		ms := sc.slack.Messages()
		return len(ms) == 1 && ms[0].Updates >= 1 && threatsIn(ms[0]) == 5
	}, "the group's message was not updated")
	m := sc.slack.Messages()[0]
	require.Equal(t, slackstub.EndpointPostMessage, m.Endpoint)
	require.Equal(t, slackstub.ChannelID, m.Channel)
	require.Equal(t, 5, threatsIn(m))
	require.True(t, m.Mentions("×5"), m.AllText())

	wrong := newScenario(t, fast)
	wrong.flags["slack-bot-token"] = "xoxb-wrong"
	wrong.flags["slack-channel"] = slackstub.ChannelID
	wrong.flags["slack-api-url"] = wrong.slack.APIURL()
	delete(wrong.flags, "slack-webhook-url")
	wrong.start(nil)
	wrong.publish(threat(event.NewID(), event.SeverityHigh))
	natstest.Eventually(t, wait, func() bool {
		s, err := wrong.js.Stream(t.Context(), bus.StreamDeadLetter)
		if err != nil {
			return false
		}
		dl, err := s.GetLastMsgForSubject(t.Context(), subject.DeadLetter("notifier-slack-api"))
		return err == nil && strings.Contains(dl.Header.Get(bus.HeaderError), "invalid_auth") && !strings.Contains(dl.Header.Get(bus.HeaderError), "xoxb-wrong")
	}, "no dead letter naming invalid_auth")
}

// TestBurst10k: a burst of 10,000 low threats becomes a handful of messages
// that account for every one of them.
func TestBurst10k(t *testing.T) {
	t.Parallel()
	sc := newScenario(t, with(fast, "notify-budget", "20", "notify-digest-interval", "10s"))
	sc.start(nil)
	sc.publishAsync(burst(10000, 40, 3, event.SeverityLow))
	natstest.Eventually(t, time.Minute, func() bool { return counted(sc.slack) == 10000 }, "not every threat is accounted for (%d)", counted(sc.slack))
	posts := len(sc.slack.Messages())
	t.Logf("10,000 threats: %d messages", posts)
	require.LessOrEqual(t, posts, 30)
	digests := 0
	for _, m := range sc.slack.Messages() {
		if strings.Contains(string(m.Raw), "whalewatch_digest") {
			digests++
			require.Contains(t, m.Text, " more: ")
			require.Contains(t, m.Text, "on 40 containers")
		}
	}
	require.NotZero(t, digests)
}

// TestCriticalOvertakesLows: a critical threat published behind 10,000 low
// ones is posted while the lows are still being worked through.
func TestCriticalOvertakesLows(t *testing.T) {
	t.Parallel()
	sc := newScenario(t, with(fast, "notify-budget", "1000000")) // every low is a post
	sc.slack.SetDelay(20 * time.Millisecond)
	sc.publishAsync(burst(10000, 40, 3, event.SeverityLow))
	sc.start(nil)
	natstest.Eventually(t, wait, func() bool { return len(sc.slack.Messages()) > 0 }, "lows not being posted")
	crit := threat(event.NewID(), event.SeverityCritical)
	sc.publish(crit)
	natstest.Eventually(t, wait, func() bool { return len(sc.slack.Mentioning(crit.Event.ID)) == 1 }, "critical not posted")
	info := sc.consumerInfo("notifier-slack-webhook-low")
	require.NotNil(t, info)
	require.Positive(t, info.NumPending, "the critical threat was posted before the lows were done")
}

// TestThreeReplicasSlowSlack: three replicas and a Slack taking 3 s per post
// post each threat once.
func TestThreeReplicasSlowSlack(t *testing.T) {
	t.Parallel()
	sc := newScenario(t, with(fast, "slack-timeout", "5s", "notify-budget", "0"))
	sc.slack.SetDelay(3 * time.Second)
	for range 3 {
		sc.start(nil)
	}
	es := append(distinct(6, event.SeverityHigh), distinct(6, event.SeverityCritical)...)
	sc.publishAsync(es)
	waitPosted(t, sc, es, time.Minute)
	u, total := sc.posted(es)
	require.Equal(t, len(es), u)
	require.Equal(t, len(es), total, "duplicates")
}

// TestKillMidStream: a replica killed with SIGKILL while posting repeats at
// most the one alert it had in flight, and stalls nothing for long.
func TestKillMidStream(t *testing.T) {
	t.Parallel()
	sc := newScenario(t, with(fast, "notify-budget", "0"))
	sc.slack.SetDelay(300 * time.Millisecond)
	kill := sc.startProcess(nil)
	sc.startProcess(nil)
	es := distinct(30, event.SeverityHigh)
	sc.publishAsync(es)
	natstest.Eventually(t, wait, func() bool { return len(sc.slack.Messages()) >= 6 }, "no posts")
	kill()
	waitPosted(t, sc, es, time.Minute)
	u, total := sc.posted(es)
	require.Equal(t, len(es), u)
	require.LessOrEqual(t, total-u, 1, "a crash repeats at most the alert in flight")
	require.Less(t, maxGap(sc), 8*time.Second, "the dead replica's alerts went elsewhere within its lease and the ack wait")
}

// TestLostAnswer: Slack posts but its answer is lost; the alert is posted
// again at most once, and acked.
func TestLostAnswer(t *testing.T) {
	t.Parallel()
	sc := newScenario(t, fast)
	sc.start(nil)
	sc.slack.LoseNextAnswers(1)
	e := threat(event.NewID(), event.SeverityHigh)
	sc.publish(e)
	sc.drained("notifier-slack-webhook-high")
	_, total := sc.posted([]*event.Event{e})
	require.GreaterOrEqual(t, total, 1)
	require.LessOrEqual(t, total, 2, "a lost answer repeats the alert at most once")
}

// TestStartPosition: a notifier whose consumers do not exist yet does not post
// the threats already older than NOTIFY_MAX_AGE; one that fell behind counts
// them in a single digest.
func TestStartPosition(t *testing.T) {
	t.Parallel()
	sc := newScenario(t, with(fast, "notify-max-age", "1s", "notify-digest-interval", "5s"))
	old := distinct(300, event.SeverityHigh)
	sc.publishAsync(old)
	stream, err := sc.js.Stream(t.Context(), bus.StreamThreats)
	require.NoError(t, err)
	last, err := stream.GetMsg(t.Context(), uint64(len(old)))
	require.NoError(t, err)
	natstest.Eventually(t, wait, func() bool { return time.Since(last.Time) > 1500*time.Millisecond }, "clock")

	stop := sc.start(nil)
	fresh := threat(event.NewID(), event.SeverityHigh)
	sc.publish(fresh)
	natstest.Eventually(t, wait, func() bool { return len(sc.slack.Mentioning(fresh.Event.ID)) == 1 }, "fresh threat not posted")
	sc.drained("notifier-slack-webhook-high")
	u, _ := sc.posted(old)
	require.Zero(t, u, "old threats posted by a new consumer")
	stop()

	// Behind: the consumer exists, the threats age while no replica runs.
	behind := distinct(200, event.SeverityHigh)
	sc.publishAsync(behind)
	natstest.Eventually(t, wait, func() bool { return time.Since(behind[len(behind)-1].Timestamp) > 1500*time.Millisecond }, "clock")
	before := len(sc.slack.Messages())
	sc.start(nil)
	sc.drained("notifier-slack-webhook-high")
	natstest.Eventually(t, wait, func() bool { return len(sc.slack.Messages()) > before }, "no digest")
	ms := sc.slack.Messages()[before:]
	require.Len(t, ms, 1, "one summary")
	require.Equal(t, 200, threatsIn(ms[0]))
	require.Contains(t, ms[0].Text, "200 older than the notifier's maximum age")
}

// TestOutage500: during an outage of 500s, requests are spaced by back-off:
// at most 1.5 requests per alert in all.
func TestOutage500(t *testing.T) {
	t.Parallel()
	sc := newScenario(t, fast)
	sc.start(nil)
	sc.slack.FailFor(3*time.Second, http.StatusInternalServerError)
	es := distinct(16, event.SeverityHigh)
	for _, e := range es {
		sc.publish(e)
		time.Sleep(250 * time.Millisecond) // alerts arrive during the outage, as they would
	}
	waitPosted(t, sc, es, wait)
	perAlert := float64(sc.slack.Requests()) / float64(len(es))
	t.Logf("%d requests for %d alerts", sc.slack.Requests(), len(es))
	require.LessOrEqual(t, perAlert, 1.5)
}

// TestOutputsAreIndependent: a Slack webhook that keeps failing neither
// blocks nor silences the JSON webhook and the routes send each threat where
// they say.
func TestOutputsAreIndependent(t *testing.T) {
	t.Parallel()
	j := newJSONReceiver(t)
	routes := filepath.Join(t.TempDir(), "routes.yaml")
	require.NoError(t, os.WriteFile(routes, []byte(`
routes:
  - match: {severity: [critical]}
    to: [slack-webhook, json-webhook]
  - match: {labels: {team: payments}}
    to: [json-webhook]
default: [slack-webhook]
`), 0o644))
	sc := newScenario(t, with(fast, "json-webhook-url", j.srv.URL+"/hook", "notify-routes", routes, "notify-budget", "0"))
	sc.start(nil)
	sc.slack.FailFor(time.Hour, http.StatusServiceUnavailable)

	crit := distinct(5, event.SeverityCritical)
	pay := distinct(5, event.SeverityHigh)
	for _, e := range pay {
		e.Container.Labels = map[string]string{"team": "payments"}
	}
	other := distinct(5, event.SeverityHigh)
	sc.publish(append(append(crit, pay...), other...)...)
	natstest.Eventually(t, wait, func() bool { return len(j.received()) == 10 }, "JSON webhook got %d of 10", len(j.received()))
	got := map[string]bool{}
	for _, d := range j.received() {
		require.Equal(t, "alert", d.Kind)
		got[d.Event.Event.ID] = true
	}
	for _, e := range append(crit, pay...) {
		require.True(t, got[e.Event.ID], "%s not delivered", e.Event.ID)
	}
	require.Empty(t, sc.slack.Messages(), "Slack is down")

	sc.slack.FailFor(0, 0)
	want := append(crit, other...)
	waitPosted(t, sc, want, wait)
	u, _ := sc.posted(pay)
	require.Zero(t, u, "payments threats are routed away from Slack")
}

func TestConsumersPerDestinationAndSeverity(t *testing.T) {
	t.Parallel()
	j := newJSONReceiver(t)
	sc := newScenario(t, with(fast, "json-webhook-url", j.srv.URL, "console", "true"))
	sc.start(nil)
	natstest.Eventually(t, wait, func() bool {
		for _, d := range []string{"console", "slack-webhook", "json-webhook"} {
			for _, s := range event.Severities {
				if sc.consumerInfo(fmt.Sprintf("notifier-%s-%s", d, s)) == nil {
					return false
				}
			}
		}
		return true
	}, "not every destination has its consumers")
}

// TestBudgetIsSharedByReplicas: two replicas together keep to one
// destination's budget.
func TestBudgetIsSharedByReplicas(t *testing.T) {
	t.Parallel()
	sc := newScenario(t, with(fast, "notify-budget", "8", "notify-digest-interval", "5s"))
	sc.start(nil)
	sc.start(nil)
	sc.publishAsync(burst(2000, 40, 3, event.SeverityLow))
	natstest.Eventually(t, time.Minute, func() bool { return counted(sc.slack) == 2000 }, "not every threat is accounted for (%d)", counted(sc.slack))
	alerts := 0
	for _, m := range sc.slack.Messages() {
		if strings.Contains(string(m.Raw), `"whalewatch_alert"`) {
			alerts++
		}
	}
	// A burst gets 2 of the 8 a minute at once, plus one more every 7.5 s.
	require.LessOrEqual(t, alerts, 3, "alerts posted by both replicas together")
}
