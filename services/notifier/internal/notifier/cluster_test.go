package notifier

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/subject"
	"github.com/whalewatch/whalewatch/testkit/natscluster"
	"github.com/whalewatch/whalewatch/testkit/slackstub"
)

// TestClusterLeaderKill: on a three-node cluster with R3 streams, the node
// leading the notifier's consumer, the threats stream and the ledger is
// killed under load and restarted (issue 13's worst case). Every threat is
// posted once, and none waits long.
func TestClusterLeaderKill(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		n, rate    int
		slackDelay time.Duration
	}{
		{"fast Slack", 450, 50, 0},
		// Posts slower than threats come: a post is in flight at the kill,
		// whose claim's done record meets the election.
		{"slow Slack", 60, 6, 400 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dups, worst, stall, elected := runClusterLeaderKill(t, tc.n, tc.rate, tc.slackDelay)
			t.Logf("%d high threats at %d/s, Slack answering in %v, leader of consumer, stream and ledger killed and restarted: %d duplicate posts, leaders elected %v after the kill, longest wait %v, longest time without a post %v",
				tc.n, tc.rate, tc.slackDelay, dups, elected.Round(time.Millisecond), worst.Round(time.Millisecond), stall.Round(time.Millisecond))
			require.Zero(t, dups, "duplicate posts")
			// Posts stop for the elections, then at most: a fetch's expiry
			// (2 s), a threat the dying leader had sent, redelivered after
			// the ack wait (5 s from its delivery, before the kill), and a
			// post's claim retried (2 s deadline). The race detector slows
			// each.
			require.Less(t, stall, max(elected, 5*time.Second)+slowdown*5*time.Second, "longest time without a post")
		})
	}
}

// runClusterLeaderKill returns the duplicate posts, the longest time from a
// threat's publish to its post (queueing included), and the longest time
// between two posts (the stall), and how long after the kill the stream,
// the consumer and the ledger were led again.
func runClusterLeaderKill(t *testing.T, n, rate int, slackDelay time.Duration) (dups int, worst, stall, elected time.Duration) {
	c := natscluster.New(t)
	nc, js := c.Connect(t)
	sc := &scenario{tb: t, js: js, slack: slackstub.New(t), flags: map[string]string{
		"nats-url":          c.URLs(),
		"stream-replicas":   "3",
		"http-addr":         "",
		"slack-webhook-url": "",
		"log-level":         "error",
		"notify-budget":     "0",
	}}
	sc.flags["slack-webhook-url"] = sc.slack.WebhookURL()
	sc.slack.SetDelay(slackDelay)
	started := time.Now()
	sc.start(nil)

	const durable = "notifier-slack-webhook-high"
	leader := c.WaitConsumerLeader(bus.StreamThreats, durable, 30*time.Second)
	for _, sev := range event.Severities {
		c.WaitConsumerLeader(bus.StreamThreats, "notifier-slack-webhook-"+string(sev), 30*time.Second)
	}
	t.Logf("notifier consuming every severity %v after its start on a fresh cluster", time.Since(started).Round(time.Millisecond))
	c.WaitStreamLeader("KV_"+LedgerBucket, 30*time.Second)
	c.MoveStreamLeader(nc, "KV_"+LedgerBucket, leader)
	c.MoveStreamLeader(nc, bus.StreamThreats, leader)
	require.Equal(t, leader, c.ConsumerLeader(bus.StreamThreats, durable))

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	es := distinct(n, event.SeverityHigh)
	published := map[string]time.Time{}
	var outage func(time.Duration) time.Duration
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for i, e := range es {
		<-tick.C
		switch i {
		case n / 3:
			killed := time.Now()
			c.Kill(leader)
			outage = c.Outage(killed,
				func() int { return c.StreamLeader(bus.StreamThreats) },
				func() int { return c.ConsumerLeader(bus.StreamThreats, durable) },
				func() int { return c.KVLeader(LedgerBucket) })
		case 2 * n / 3:
			c.Restart(leader)
		}
		data, err := event.Marshal(e)
		require.NoError(t, err)
		published[e.Event.ID] = time.Now()
		msg := nats.NewMsg(subject.ForThreat(e))
		msg.Data = data
		natscluster.PublishUntilStored(t, ctx, js, msg, e.Event.ID) // as the detector does
	}
	waitPosted(t, sc, es, 90*time.Second)
	// Redeliveries of acks lost with the leader come after the ack wait
	// (5 s) and a claim's lease (12 s): wait them out before counting.
	sc.drained(durable)
	u, total := sc.posted(es)
	require.Equal(t, n, u, "threats posted")
	for _, m := range sc.slack.Messages() {
		for _, id := range hexID.FindAllString(string(m.Raw), -1) {
			if p, ok := published[id]; ok {
				worst = max(worst, m.At.Sub(p))
			}
		}
	}
	return total - u, worst, maxGap(sc), outage(time.Minute)
}
