package notifier

import (
	"net/http"
	"testing"
	"time"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/testkit/natstest"
	"github.com/whalewatch/whalewatch/testkit/slackstub"
)

// The scenario benchmarks measure the behaviours of issue 7 on whole
// notifiers (started from flags, as main does) against the Slack stand-in.
// Each runs its scenario once, whatever b.N; run them with
//
//	bench/notifier/run.sh
//
// They report what the issue asks for as custom metrics.

// BenchmarkScenarioBurst10k: 10,000 low threats on 40 containers and 3 rules,
// published at once; the Slack posts in the first minute.
func BenchmarkScenarioBurst10k(b *testing.B) {
	sc := newScenario(b, nil)
	sc.start(nil)
	es := burst(10000, 40, 3, event.SeverityLow)
	start := time.Now()
	sc.publishAsync(es)
	deadline := start.Add(time.Minute)
	for time.Now().Before(deadline) && sc.slack.Requests() < len(es) {
		time.Sleep(100 * time.Millisecond)
	}
	posts := 0
	for _, m := range sc.slack.Messages() {
		if m.At.Before(deadline) {
			posts++
		}
	}
	b.ReportMetric(float64(posts), "posts/first-min")
	// Every threat is accounted for once the groups' windows and the digest
	// have closed.
	end := start.Add(3 * time.Minute)
	for time.Now().Before(end) && countedThreats(sc.slack.Messages()) < len(es) {
		time.Sleep(100 * time.Millisecond)
	}
	b.ReportMetric(float64(countedThreats(sc.slack.Messages())), "threats-counted")
	b.ReportMetric(float64(len(sc.slack.Messages())), "posts-total")
	b.ReportMetric(time.Since(start).Seconds(), "s-until-all-counted")
}

// BenchmarkScenarioCriticalBehind10kLows: 10,000 low threats queued, then one
// critical; Slack answers in 20 ms. Time from publishing the critical threat
// to its post (capped at 60 s).
func BenchmarkScenarioCriticalBehind10kLows(b *testing.B) {
	sc := newScenario(b, nil)
	sc.slack.SetDelay(20 * time.Millisecond)
	sc.publishAsync(burst(10000, 40, 3, event.SeverityLow))
	sc.start(nil)
	crit := threat(event.NewID(), event.SeverityCritical)
	crit.Container.Name = "crit-container"
	start := time.Now()
	sc.publish(crit)
	deadline := start.Add(time.Minute)
	for time.Now().Before(deadline) && len(sc.slack.Mentioning(crit.Event.ID)) == 0 {
		time.Sleep(20 * time.Millisecond)
	}
	lat := time.Since(start)
	if ms := sc.slack.Mentioning(crit.Event.ID); len(ms) > 0 {
		lat = ms[0].At.Sub(start)
	}
	b.ReportMetric(lat.Seconds(), "s-critical-latency")
	b.ReportMetric(float64(sc.slack.Requests()), "requests-before")
}

// BenchmarkScenarioReplicas3Slack3s: three replicas, Slack taking 3 s per
// post, 60 high threats on distinct containers; duplicate posts.
func BenchmarkScenarioReplicas3Slack3s(b *testing.B) {
	sc := newScenario(b, map[string]string{"notify-budget": "1000", "slack-timeout": "10s"})
	sc.slack.SetDelay(3 * time.Second)
	for range 3 {
		sc.start(nil)
	}
	es := distinct(60, event.SeverityHigh)
	sc.publishAsync(es)
	waitPosted(b, sc, es, 3*time.Minute)
	u, total := sc.posted(es)
	b.ReportMetric(float64(total-u), "duplicates")
	b.ReportMetric(float64(u), "alerts-posted")
}

// BenchmarkScenarioCrash: two replicas as processes, Slack taking 200 ms; one
// is killed with SIGKILL after 10 posts. Duplicates, and the longest gap
// between two posts (the stall).
func BenchmarkScenarioCrash(b *testing.B) {
	sc := newScenario(b, map[string]string{"notify-budget": "1000"})
	sc.slack.SetDelay(200 * time.Millisecond)
	kill := sc.startProcess(nil)
	sc.startProcess(nil)
	es := distinct(60, event.SeverityHigh)
	sc.publishAsync(es)
	natstest.Eventually(b, time.Minute, func() bool { return len(sc.slack.Messages()) >= 10 }, "no posts")
	kill()
	waitPosted(b, sc, es, 3*time.Minute)
	u, total := sc.posted(es)
	b.ReportMetric(float64(total-u), "duplicates")
	b.ReportMetric(maxGap(sc).Seconds(), "s-longest-gap")
}

// BenchmarkScenarioFreshDurableOldStream: 2,000 threats older than
// NOTIFY_MAX_AGE in the stream, then a notifier whose durable does not exist
// yet; posts.
func BenchmarkScenarioFreshDurableOldStream(b *testing.B) {
	sc := newScenario(b, map[string]string{"notify-max-age": "2s", "notify-budget": "1000"})
	old := distinct(2000, event.SeverityHigh)
	for _, e := range old {
		e.Timestamp = time.Now().Add(-time.Hour)
	}
	sc.publishAsync(old)
	if has("notify-max-age") {
		time.Sleep(2 * time.Second) // the stream's copies become older than the max age
	}
	sc.start(nil)
	fresh := threat(event.NewID(), event.SeverityHigh)
	sc.publish(fresh)
	natstest.Eventually(b, 2*time.Minute, func() bool {
		return len(sc.slack.Mentioning(fresh.Event.ID)) > 0 && sc.slack.Requests() >= minInt(len(old), 1)
	}, "fresh threat not posted")
	time.Sleep(2 * time.Second) // let stragglers show
	u, _ := sc.posted(old)
	b.ReportMetric(float64(u), "old-posted")
}

// BenchmarkScenarioOutage500: Slack answers 500 for 20 s while 20 high threats
// arrive, one a second; requests per alert until all are posted.
func BenchmarkScenarioOutage500(b *testing.B) {
	sc := newScenario(b, map[string]string{"notify-budget": "1000"})
	sc.start(nil)
	sc.slack.FailFor(20*time.Second, http.StatusInternalServerError)
	es := distinct(20, event.SeverityHigh)
	for _, e := range es {
		sc.publish(e)
		time.Sleep(time.Second)
	}
	waitPosted(b, sc, es, 3*time.Minute)
	b.ReportMetric(float64(sc.slack.Requests())/float64(len(es)), "requests/alert")
}

func minInt(a, b int) int { return min(a, b) }

// waitPosted waits until every threat of es was posted at least once.
func waitPosted(tb testing.TB, sc *scenario, es []*event.Event, timeout time.Duration) {
	tb.Helper()
	natstest.Eventually(tb, timeout, func() bool {
		u, _ := sc.posted(es)
		return u == len(es)
	}, "not every threat was posted")
}

// maxGap is the longest time between two consecutive accepted posts.
func maxGap(sc *scenario) time.Duration {
	var gap time.Duration
	ms := sc.slack.Messages()
	for i := 1; i < len(ms); i++ {
		gap = max(gap, ms[i].At.Sub(ms[i-1].At))
	}
	return gap
}

// countedThreats is the number of threats the messages account for: one per
// alert message, plus the counts digests and summaries state.
func countedThreats(ms []slackstub.Message) int {
	n := 0
	for _, m := range ms {
		n += threatsIn(m)
	}
	return n
}
