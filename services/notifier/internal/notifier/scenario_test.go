package notifier

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/flagenv"
	"github.com/whalewatch/whalewatch/pkg/subject"
	"github.com/whalewatch/whalewatch/testkit/natstest"
	"github.com/whalewatch/whalewatch/testkit/slackstub"
)

// childEnv makes the test binary run as a notifier process (see TestMain), so
// that a test can kill -9 a real process in the middle of its work.
const childEnv = "WHALEWATCH_NOTIFIER_CHILD_ARGS"

func TestMain(m *testing.M) {
	if args := os.Getenv(childEnv); args != "" {
		os.Exit(runChild(strings.Split(args, "\x1f")))
	}
	os.Exit(m.Run())
}

// runChild is main for a child notifier.
func runChild(args []string) int {
	var cfg Config
	fs := flag.NewFlagSet("notifier", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	if err := flagenv.Parse(fs, args, func(string) string { return "" }); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := Run(ctx, cfg, log, prometheus.NewRegistry()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// scenario is a NATS server, a Slack stand-in and notifiers started the way
// main starts them (from flags), for the tests and benchmarks of whole
// behaviours. Flags the code does not have are left out, so that one
// scenario measures the code before and after a flag was added.
type scenario struct {
	tb    testing.TB
	srv   *server.Server
	js    jetstream.JetStream
	slack *slackstub.Server
	// flags are the flags every notifier of the scenario gets.
	flags map[string]string
}

func newScenario(tb testing.TB, flags map[string]string) *scenario {
	tb.Helper()
	sc := &scenario{tb: tb, srv: natstest.Server(tb), slack: slackstub.New(tb)}
	_, sc.js = natstest.Connect(tb, sc.srv)
	var streams bus.StreamsConfig
	streams.RegisterFlags(flag.NewFlagSet("s", flag.ContinueOnError))
	require.NoError(tb, bus.EnsureStreams(tb.Context(), sc.js, streams))
	sc.flags = map[string]string{
		"nats-url":          sc.srv.ClientURL(),
		"http-addr":         "",
		"slack-webhook-url": sc.slack.WebhookURL(),
		"slack-timeout":     "5s",
		"log-level":         "error",
	}
	for k, v := range flags {
		sc.flags[k] = v
	}
	return sc
}

// args turns the scenario's flags, with extra, into arguments, leaving out
// the flags the notifier does not know.
func (sc *scenario) args(extra map[string]string) []string {
	var cfg Config
	fs := flag.NewFlagSet("notifier", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	all := map[string]string{}
	for k, v := range sc.flags {
		all[k] = v
	}
	for k, v := range extra {
		all[k] = v
	}
	var out []string
	for k, v := range all {
		if fs.Lookup(k) != nil {
			out = append(out, "-"+k+"="+v)
		}
	}
	return out
}

// has reports whether the notifier has flag name.
func has(name string) bool {
	var cfg Config
	fs := flag.NewFlagSet("notifier", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	return fs.Lookup(name) != nil
}

// start runs a notifier in this process until the returned stop is called or
// the test ends.
func (sc *scenario) start(extra map[string]string) (stop func()) {
	sc.tb.Helper()
	var cfg Config
	fs := flag.NewFlagSet("notifier", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	require.NoError(sc.tb, flagenv.Parse(fs, sc.args(extra), func(string) string { return "" }))
	require.NoError(sc.tb, cfg.Validate())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		var w io.Writer = io.Discard
		if os.Getenv("WHALEWATCH_TEST_LOG") != "" {
			w = os.Stderr
		}
		done <- Run(ctx, cfg, slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})), prometheus.NewRegistry())
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			require.NoError(sc.tb, <-done)
		})
	}
	sc.tb.Cleanup(stop)
	return stop
}

// startProcess runs a notifier as a child process; kill -9 it with the
// returned function.
func (sc *scenario) startProcess(extra map[string]string) (kill func()) {
	sc.tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+strings.Join(sc.args(extra), "\x1f"))
	cmd.Stderr = os.Stderr
	require.NoError(sc.tb, cmd.Start())
	var once sync.Once
	kill = func() {
		once.Do(func() {
			_ = cmd.Process.Signal(syscall.SIGKILL)
			_ = cmd.Wait()
		})
	}
	sc.tb.Cleanup(kill)
	return kill
}

// publish publishes threats as the detector does.
func (sc *scenario) publish(es ...*event.Event) {
	sc.tb.Helper()
	for _, e := range es {
		data, err := event.Marshal(e)
		require.NoError(sc.tb, err)
		msg := nats.NewMsg(subject.ForThreat(e))
		msg.Data = data
		_, err = sc.js.PublishMsg(sc.tb.Context(), msg, jetstream.WithMsgID(e.Event.ID))
		require.NoError(sc.tb, err)
	}
}

// publishAsync publishes many threats fast, and waits for their acks.
func (sc *scenario) publishAsync(es []*event.Event) {
	sc.tb.Helper()
	for i, e := range es {
		data, err := event.Marshal(e)
		require.NoError(sc.tb, err)
		msg := nats.NewMsg(subject.ForThreat(e))
		msg.Data = data
		_, err = sc.js.PublishMsgAsync(msg, jetstream.WithMsgID(e.Event.ID))
		require.NoError(sc.tb, err)
		if i%1000 == 999 || i == len(es)-1 {
			select {
			case <-sc.js.PublishAsyncComplete():
			case <-time.After(time.Minute):
				sc.tb.Fatal("publishing did not complete")
			}
		}
	}
}

// burst returns n threats of severity sev spread over containers containers
// and rules rules, as a noisy incident gives.
func burst(n, containers, rules int, sev event.Severity) []*event.Event {
	out := make([]*event.Event, n)
	for i := range out {
		e := threat(event.NewID(), sev)
		c := i % containers
		e.Container.ID = fmt.Sprintf("%064x", c+1)
		e.Container.Name = fmt.Sprintf("web-%d", c)
		e.Container.Image.Name = fmt.Sprintf("shop/web-%d:1", c%7)
		e.Rule.ID = fmt.Sprintf("rule-%d", i%rules)
		e.Timestamp = time.Now().UTC()
		out[i] = e
	}
	return out
}

// distinct returns n threats each of its own container, which no grouping
// may merge.
func distinct(n int, sev event.Severity) []*event.Event {
	out := burst(n, n, 1, sev)
	for i, e := range out {
		e.Rule.ID = fmt.Sprintf("rule-%d", i)
		e.Container.ID = event.NewID() + event.NewID() // never grouped with another call's
	}
	return out
}

// posted counts, per event id, the accepted Slack messages naming it.
func (sc *scenario) posted(es []*event.Event) (unique, total int) {
	ids := map[string]bool{}
	for _, e := range es {
		ids[e.Event.ID] = true
	}
	seen := map[string]int{}
	for _, m := range sc.slack.Messages() {
		inMsg := map[string]bool{}
		for _, id := range hexID.FindAllString(string(m.Raw), -1) {
			if ids[id] && !inMsg[id] {
				inMsg[id] = true
				seen[id]++
				total++
			}
		}
	}
	return len(seen), total
}

// hexID matches an event id as event.NewID makes them.
var hexID = regexp.MustCompile(`\b[0-9a-f]{32}\b`)

// threatsIn is how many threats message m accounts for: the count in its
// metadata (event_payload.threats) for an alert, group or digest message,
// and 1 for a message without it (the notifier before issue 7).
func threatsIn(m slackstub.Message) int {
	var p struct {
		Metadata *struct {
			Payload struct {
				Threats int `json:"threats"`
			} `json:"event_payload"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(m.Raw, &p); err != nil || p.Metadata == nil {
		return 1
	}
	return p.Metadata.Payload.Threats
}
