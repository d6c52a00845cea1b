package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/subject"
	"github.com/whalewatch/whalewatch/testkit/dockertest"
	"github.com/whalewatch/whalewatch/testkit/esstub"
	"github.com/whalewatch/whalewatch/testkit/natstest"
	"github.com/whalewatch/whalewatch/testkit/slackstub"
)

// Stack is a running whalewatch: NATS, the four services and the stand-ins.
type Stack struct {
	NATSURL  string
	Host     string // the collector's host.name
	ES       *esstub.Server
	Slack    *slackstub.Server
	NC       *nats.Conn
	Services map[string]*Proc

	mu      sync.Mutex
	threats []*event.Event
	arrived map[string]time.Time // threat event.id -> when it reached the test
	tele    []*event.Event
}

// StartStack starts everything and waits until every service is ready. The
// detector's configuration rules (root user, no limits, ...) flag every test
// container, the benign one too, so they run only when configRules is set.
func StartStack(tb testing.TB, configRules bool) *Stack {
	tb.Helper()
	return StartStackWith(tb, StackOptions{ConfigRules: configRules})
}

// StackOptions tune a stack: Collector and Detector are environment
// variables added to (or replacing) those services' defaults.
type StackOptions struct {
	ConfigRules         bool
	Collector, Detector map[string]string
}

// StartStackWith starts a stack as o says.
func StartStackWith(tb testing.TB, o StackOptions) *Stack {
	tb.Helper()
	configRules := o.ConfigRules
	dockertest.Available(tb)
	bin := Binaries(tb)
	st := &Stack{
		Host:     "e2e-" + event.NewID()[:8],
		ES:       esstub.New(tb),
		Slack:    slackstub.New(tb),
		Services: map[string]*Proc{},
		arrived:  map[string]time.Time{},
	}
	st.NATSURL = StartNATS(tb, bin)

	nc, err := nats.Connect(st.NATSURL)
	require.NoError(tb, err)
	tb.Cleanup(nc.Close)
	st.NC = nc
	_, err = nc.Subscribe(subject.AllThreats, func(m *nats.Msg) {
		e, err := event.Decode(m.Data)
		if err != nil {
			tb.Errorf("undecodable threat on %s: %v", m.Subject, err)
			return
		}
		st.mu.Lock()
		st.threats = append(st.threats, e)
		st.arrived[e.Event.ID] = time.Now()
		st.mu.Unlock()
	})
	require.NoError(tb, err)
	_, err = nc.Subscribe(subject.TelemetryPrefix+"."+subject.Token(st.Host)+".>", func(m *nats.Msg) {
		if e, err := event.Decode(m.Data); err == nil {
			st.mu.Lock()
			st.tele = append(st.tele, e)
			st.mu.Unlock()
		}
	})
	require.NoError(tb, err)
	require.NoError(tb, nc.Flush())

	common := func(extra map[string]string) map[string]string {
		env := map[string]string{
			"NATS_URL":   st.NATSURL,
			"HTTP_ADDR":  FreeAddr(tb),
			"LOG_FORMAT": "text",
			"LOG_LEVEL":  "debug",
		}
		for k, v := range extra {
			env[k] = v
		}
		return env
	}
	// The detector goes first so that it creates the streams; every service
	// does so idempotently, in any order.
	detectorEnv := map[string]string{"RULES_DISABLE": "tag:configuration"}
	if configRules {
		detectorEnv = map[string]string{}
	}
	for k, v := range o.Detector {
		detectorEnv[k] = v
	}
	collectorEnv := map[string]string{"HOST_NAME": st.Host, "PROCESS_POLL_INTERVAL": "200ms"}
	for k, v := range o.Collector {
		collectorEnv[k] = v
	}
	st.Services["detector"] = Start(tb, "detector", filepath.Join(bin, "detector"), common(detectorEnv))
	st.Services["indexer"] = Start(tb, "indexer", filepath.Join(bin, "indexer"), common(map[string]string{
		"ELASTICSEARCH_URL": st.ES.URL, "FLUSH_INTERVAL": "50ms",
	}))
	st.Services["notifier"] = Start(tb, "notifier", filepath.Join(bin, "notifier"), common(map[string]string{
		"SLACK_WEBHOOK_URL": st.Slack.WebhookURL(), "CONSOLE": "true",
	}))
	st.Services["collector"] = Start(tb, "collector", filepath.Join(bin, "collector"), common(collectorEnv))
	for _, name := range services {
		st.Services[name].WaitReady(tb, 60*time.Second)
	}
	return st
}

// Threats returns the threats seen so far.
func (st *Stack) Threats() []*event.Event {
	st.mu.Lock()
	defer st.mu.Unlock()
	return append([]*event.Event(nil), st.threats...)
}

// WaitThreat waits for a threat of rule on container and returns it with
// the time it arrived.
func (st *Stack) WaitThreat(tb testing.TB, containerID, ruleID string, timeout time.Duration) (*event.Event, time.Time) {
	tb.Helper()
	var found *event.Event
	natstest.Eventually(tb, timeout, func() bool {
		for _, t := range st.Threats() {
			if t.Container != nil && t.Container.ID == containerID && t.Rule.ID == ruleID {
				found = t
				return true
			}
		}
		return false
	}, "no %s threat for container %s", ruleID, containerID)
	st.mu.Lock()
	defer st.mu.Unlock()
	return found, st.arrived[found.Event.ID]
}

// ThreatsOf returns the threats of rule on container seen so far ("" rule: all).
func (st *Stack) ThreatsOf(containerID, rule string) []*event.Event {
	var out []*event.Event
	for _, t := range st.Threats() {
		if t.Container != nil && t.Container.ID == containerID && (rule == "" || t.Rule.ID == rule) {
			out = append(out, t)
		}
	}
	return out
}

// Telemetry returns the telemetry seen so far that matches f.
func (st *Stack) Telemetry(f func(*event.Event) bool) []*event.Event {
	st.mu.Lock()
	defer st.mu.Unlock()
	var out []*event.Event
	for _, e := range st.tele {
		if f(e) {
			out = append(out, e)
		}
	}
	return out
}

// WaitTelemetry waits for telemetry matching f.
func (st *Stack) WaitTelemetry(tb testing.TB, timeout time.Duration, what string, f func(*event.Event) bool) *event.Event {
	tb.Helper()
	var found *event.Event
	natstest.Eventually(tb, timeout, func() bool {
		st.mu.Lock()
		defer st.mu.Unlock()
		for _, e := range st.tele {
			if f(e) {
				found = e
				return true
			}
		}
		return false
	}, "no telemetry: %s", what)
	return found
}

func TestNetcatInContainerBecomesThreatSlackPostAndDocument(t *testing.T) {
	st := StartStack(t, false)

	benign := dockertest.Run(t, []string{"--name", "ww-e2e-benign-" + st.Host}, "sleep", "3600")
	name := "ww-e2e-nc-" + st.Host
	bad := dockertest.Run(t, []string{"--name", name}, "sleep", "3600")

	// The collector sees the benign container's process before the attack.
	st.WaitTelemetry(t, 30*time.Second, "benign sleep process", func(e *event.Event) bool {
		return e.Whalewatch.Telemetry == event.TelemetryProcess && e.Container != nil &&
			e.Container.ID == benign && e.Process != nil && strings.HasPrefix(e.Process.CommandLine, "sleep")
	})

	start := time.Now()
	dockertest.Docker(t, "exec", "-d", bad, "nc", "-l", "-p", "4444")

	// 1. A threat on whalewatch.threats.> names the container and the command.
	threat, at := st.WaitThreat(t, bad, "suspicious-tool-netcat", 30*time.Second)
	t.Logf("docker exec -> threat on NATS: %v", at.Sub(start))
	require.Equal(t, event.KindAlert, threat.Event.Kind)
	require.Equal(t, event.SeverityHigh, threat.Whalewatch.Severity)
	require.Equal(t, name, threat.Container.Name)
	require.Equal(t, st.Host, threat.Host.Name)
	require.Contains(t, threat.Process.CommandLine, "nc -l -p 4444")
	require.Equal(t, dockertest.Image, threat.Container.Image.Name+":"+strings.Join(threat.Container.Image.Tag, ""))
	require.Equal(t, "T1095", threat.Threat.Technique.ID[0])

	// 2. Slack received a well-formed post naming container, image, host, rule and command.
	var post slackstub.Message
	natstest.Eventually(t, 30*time.Second, func() bool {
		msgs := st.Slack.Mentioning(name)
		if len(msgs) > 0 {
			post = msgs[0]
		}
		return len(msgs) > 0
	}, "no Slack post naming %s", name)
	t.Logf("docker exec -> Slack post: %v", post.At.Sub(start))
	text := post.AllText()
	for _, want := range []string{"whalewatch-test/busybox", st.Host, "suspicious-tool-netcat", "nc -l -p 4444"} {
		require.Contains(t, text, want)
	}
	require.NotEmpty(t, post.Blocks, "Block Kit blocks")

	// 3. Elasticsearch received the threat document through _bulk, as published.
	var doc esstub.Doc
	natstest.Eventually(t, 30*time.Second, func() bool {
		for _, d := range st.ES.Docs("logs-whalewatch.threat-default") {
			if d.ID == threat.Event.ID {
				doc = d
				return true
			}
		}
		return false
	}, "threat %s not indexed", threat.Event.ID)
	require.Equal(t, "create", doc.Op)
	var indexed event.Event
	require.NoError(t, json.Unmarshal(doc.Source, &indexed))
	require.Equal(t, threat.Rule.ID, indexed.Rule.ID)
	require.Equal(t, bad, indexed.Container.ID)
	require.NotEmpty(t, st.ES.BulkRequests())
	// The detector and the collector publish complete ECS, which the indexer
	// stores as it arrives (its fast path): no document took the slow one.
	require.NotNil(t, indexed.ECS)
	require.Equal(t, "whalewatch-detector", indexed.Agent.Type)
	natstest.Eventually(t, 30*time.Second, func() bool {
		return len(st.ES.Docs("logs-whalewatch.process-default")) > 0
	}, "no process telemetry indexed")
	var proc event.Event
	require.NoError(t, json.Unmarshal(st.ES.Docs("logs-whalewatch.process-default")[0].Source, &proc))
	require.Equal(t, "whalewatch-collector", proc.Agent.Type)
	require.Equal(t, st.Host, proc.Agent.Name)
	indexer := st.Services["indexer"].Admin
	fast := metricValue(t, indexer, `whalewatch_indexer_prepared_total{path="fast"}`)
	slow := metricValue(t, indexer, `whalewatch_indexer_prepared_total{path="slow"}`)
	t.Logf("indexer: %v documents on the fast path, %v on the slow one", fast, slow)
	require.Positive(t, fast)
	require.Zero(t, slow)

	// 4. One exec, one alert: the process poller also saw nc, and that must not
	// raise a second threat or post. Once the poller's nc telemetry is on NATS,
	// a later exec (wget) is behind it in the stream; the detector and the
	// notifier work in stream order, so when wget's post is out, any second nc
	// post would be out too.
	st.WaitTelemetry(t, 30*time.Second, "nc seen by the process poller", func(e *event.Event) bool {
		return e.Whalewatch.Telemetry == event.TelemetryProcess && e.Container != nil &&
			e.Container.ID == bad && e.Process != nil && strings.HasPrefix(e.Process.CommandLine, "nc ")
	})
	// Nothing listens on 127.0.0.1:9 in a --network none container: wget fails
	// at once, which is fine; docker exec reports that failure.
	_, _ = dockertest.Try("exec", bad, "wget", "-q", "-T", "1", "-O", "/dev/null", "http://127.0.0.1:9/")
	st.WaitThreat(t, bad, "suspicious-tool-downloader", 30*time.Second)
	natstest.Eventually(t, 30*time.Second, func() bool {
		for _, m := range st.Slack.Mentioning(name) {
			if strings.Contains(m.AllText(), "wget") {
				return true
			}
		}
		return false
	}, "no Slack post for wget")
	ncThreats := 0
	for _, th := range st.Threats() {
		// 5. The benign container raised nothing: its telemetry reached the
		// detector before the attack, so its threats would be here by now.
		if th.Container == nil {
			continue // host-scoped (e.g. the Docker API exposure check)
		}
		require.NotEqual(t, benign, th.Container.ID, "threat for the benign container: %s", th.Message)
		if th.Rule.ID == "suspicious-tool-netcat" && th.Container.ID == bad {
			ncThreats++
		}
	}
	require.Equal(t, 1, ncThreats, "threats for one nc exec")
	ncPosts := 0
	for _, m := range st.Slack.Mentioning(name) {
		if strings.Contains(m.AllText(), "nc -l -p 4444") {
			ncPosts++
		}
	}
	require.Equal(t, 1, ncPosts, "Slack posts for one nc exec")
}

// A privileged container with the Docker socket mounted is a threat as soon as
// it is created, before (or without) it ever starting.
func TestRiskyContainerConfigurationBecomesThreat(t *testing.T) {
	st := StartStack(t, true)
	name := "ww-e2e-priv-" + st.Host
	id := dockertest.Create(t, []string{"--name", name, "--privileged", "-v", "/var/run/docker.sock:/var/run/docker.sock"}, "sleep", "3600")

	priv, _ := st.WaitThreat(t, id, "container-privileged", 30*time.Second)
	require.Equal(t, event.SeverityCritical, priv.Whalewatch.Severity)
	require.Equal(t, event.TelemetryConfig, st.triggerKind(t, priv))
	st.WaitThreat(t, id, "docker-socket-mounted", 30*time.Second)
	natstest.Eventually(t, 30*time.Second, func() bool {
		for _, m := range st.Slack.Mentioning(name) {
			if strings.Contains(m.AllText(), "container-privileged") {
				return true
			}
		}
		return false
	}, "no Slack post for the privileged container")
}

// triggerKind is the telemetry kind of the event that raised threat t.
func (st *Stack) triggerKind(tb testing.TB, t *event.Event) event.Telemetry {
	tb.Helper()
	e := st.WaitTelemetry(tb, 10*time.Second, "trigger "+t.Whalewatch.Trigger, func(e *event.Event) bool {
		return e.Event.ID == t.Whalewatch.Trigger
	})
	return e.Whalewatch.Telemetry
}

// metricValue reads one series (name{labels} as exposed) from the /metrics
// of the service at addr; 0 when it is absent.
func metricValue(tb testing.TB, addr, series string) float64 {
	tb.Helper()
	res, err := http.Get("http://" + addr + "/metrics")
	require.NoError(tb, err)
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	require.NoError(tb, err)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			require.NoError(tb, err, line)
			return f
		}
	}
	return 0
}
