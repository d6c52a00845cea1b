package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/subject"
	"github.com/whalewatch/whalewatch/testkit/dockertest"
	"github.com/whalewatch/whalewatch/testkit/esstub"
	"github.com/whalewatch/whalewatch/testkit/natstest"
	"github.com/whalewatch/whalewatch/testkit/slackstub"
)

// TestScaledReplicas runs what `docker compose up --scale detector=3 --scale
// indexer=2 --scale notifier=2` runs, as processes: three partitioned
// detectors, two indexers and two notifiers on one NATS, one collector, while
// attacks run in containers. Once every consumer has nothing pending, each
// attack's threat is exactly once on NATS, in the Elasticsearch stand-in and
// in the Slack stand-in.
func TestScaledReplicas(t *testing.T) {
	dockertest.Available(t)
	bin := Binaries(t)
	host := "scale-" + event.NewID()[:8]
	es, slack := esstub.New(t), slackstub.New(t)
	url := StartNATS(t, bin)

	nc, err := nats.Connect(url)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	threats := map[string]map[string]int{} // container id -> rule -> distinct threats on NATS
	seen := map[string]bool{}
	msgs := make(chan *event.Event, 1024)
	_, err = nc.Subscribe(subject.AllThreats, func(m *nats.Msg) {
		if e, err := event.Decode(m.Data); err == nil {
			msgs <- e
		}
	})
	require.NoError(t, err)
	require.NoError(t, nc.Flush())

	env := func(extra map[string]string) map[string]string {
		m := map[string]string{"NATS_URL": url, "HTTP_ADDR": FreeAddr(t), "LOG_FORMAT": "text"}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	var procs []*Proc
	for i := range 3 {
		procs = append(procs, Start(t, fmt.Sprintf("detector-%d", i), filepath.Join(bin, "detector"), env(map[string]string{
			"PARTITIONS": "8", "RULES_DISABLE": "tag:configuration", "REPLICA_ID": fmt.Sprintf("detector-%d", i),
		})))
	}
	for i := range 2 {
		procs = append(procs, Start(t, fmt.Sprintf("indexer-%d", i), filepath.Join(bin, "indexer"), env(map[string]string{
			"ELASTICSEARCH_URL": es.URL, "FLUSH_INTERVAL": "50ms",
		})))
		procs = append(procs, Start(t, fmt.Sprintf("notifier-%d", i), filepath.Join(bin, "notifier"), env(map[string]string{
			"SLACK_WEBHOOK_URL": slack.WebhookURL(),
		})))
	}
	procs = append(procs, Start(t, "collector", filepath.Join(bin, "collector"), env(map[string]string{
		"HOST_NAME": host, "PROCESS_POLL_INTERVAL": "200ms",
	})))
	for _, p := range procs {
		p.WaitReady(t, 90*time.Second)
	}

	const attacks = 4
	var ids, names []string
	for i := range attacks {
		name := fmt.Sprintf("ww-scale-%d-%s", i, host)
		ids = append(ids, dockertest.Run(t, []string{"--name", name}, "sleep", "3600"))
		names = append(names, name)
	}
	for _, id := range ids {
		dockertest.Docker(t, "exec", "-d", id, "nc", "-l", "-p", "4444")
	}
	const rule = "suspicious-tool-netcat"
	drain := func() {
		for {
			select {
			case e := <-msgs:
				if e.Container == nil || seen[e.Event.ID] {
					continue
				}
				seen[e.Event.ID] = true
				if threats[e.Container.ID] == nil {
					threats[e.Container.ID] = map[string]int{}
				}
				threats[e.Container.ID][e.Rule.ID]++
			default:
				return
			}
		}
	}
	natstest.Eventually(t, 90*time.Second, func() bool {
		drain()
		for i, id := range ids {
			if threats[id][rule] == 0 || len(slack.Mentioning(names[i])) == 0 {
				return false
			}
		}
		return true
	}, "not every attack reached NATS and Slack")

	js, err := jetstream.New(nc)
	require.NoError(t, err)
	natstest.Eventually(t, 60*time.Second, func() bool { return quiet(t, js) }, "consumers still have messages pending")
	drain()

	docs := map[string]int{} // event.id -> threat documents
	for _, d := range es.Docs("logs-whalewatch.threat-default") {
		docs[d.ID]++
	}
	for i, id := range ids {
		require.Equal(t, 1, threats[id][rule], "threats of %s for %s on NATS", rule, names[i])
		require.Len(t, slack.Mentioning(names[i]), 1, "Slack posts about %s", names[i])
	}
	for evID := range seen {
		require.LessOrEqual(t, docs[evID], 1, "threat %s indexed %d times", evID, docs[evID])
	}
	for _, id := range ids {
		n := 0
		for _, d := range es.Docs("logs-whalewatch.threat-default") {
			if strings.Contains(string(d.Source), id) && strings.Contains(string(d.Source), rule) {
				n++
			}
		}
		require.Equal(t, 1, n, "threat documents of %s for %s", rule, id)
	}
}

// quiet reports whether every consumer of every stream has nothing pending
// and nothing unacknowledged.
func quiet(t *testing.T, js jetstream.JetStream) bool {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	streams := js.ListStreams(ctx)
	for s := range streams.Info() {
		stream, err := js.Stream(ctx, s.Config.Name)
		if err != nil {
			return false
		}
		consumers := stream.ListConsumers(ctx)
		for c := range consumers.Info() {
			if c.NumPending > 0 || c.NumAckPending > 0 {
				return false
			}
		}
		if consumers.Err() != nil {
			return false
		}
	}
	return streams.Err() == nil
}
