package indexer

import (
	"flag"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/flagenv"
)

// parseConfig builds a Config the way main does, from flags and env.
func parseConfig(tb testing.TB, args []string, env map[string]string) (Config, error) {
	tb.Helper()
	var cfg Config
	fs := flag.NewFlagSet("indexer", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg.RegisterFlags(fs)
	if err := flagenv.Parse(fs, args, func(k string) string { return env[k] }); err != nil {
		return cfg, err
	}
	return cfg, cfg.Validate()
}

func testLogger(tb testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tb.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// telemetry returns a valid telemetry event of kind with hostile strings in
// the fields a container controls.
func telemetry(kind event.Telemetry) *event.Event {
	e := &event.Event{
		Timestamp: time.Now().UTC().Truncate(time.Microsecond),
		Message:   "process seen: nc -lvp 4444 <script>\"quoted\"\n",
		Event: event.Meta{
			ID:       event.NewID(),
			Kind:     event.KindEvent,
			Category: []string{"process"},
			Type:     []string{"start"},
			Action:   "process-seen",
			Dataset:  kind.Dataset(),
			Module:   event.Module,
			Created:  time.Now().UTC(),
		},
		Host: event.Host{Name: "docker-host-1"},
		Container: &event.Container{
			ID:     "0123456789ab",
			Name:   "web",
			Image:  event.Image{Name: "busybox", Tag: []string{"1.36"}},
			Labels: map[string]string{"com.docker.compose.service": "web", "evil key.with.dots\n": "v\x00"},
		},
		Process: &event.Process{
			PID:         4242,
			Name:        "nc",
			Executable:  "/bin/nc",
			CommandLine: "nc -lvp 4444 -e /bin/sh",
			Args:        []string{"nc", "-lvp", "4444", "-e", "/bin/sh"},
			ArgsCount:   5,
		},
		Whalewatch: event.Whalewatch{SchemaVersion: event.SchemaVersion, Telemetry: kind, Source: "docker-top"},
	}
	e.Bound()
	return e
}

// threat returns a valid threat raised by rule.
func threat(rule string) *event.Event {
	t := telemetry(event.TelemetryProcess)
	t.Event.ID = event.NewID()
	t.Event.Kind = event.KindAlert
	t.Event.Category = []string{"intrusion_detection"}
	t.Event.Type = []string{"info"}
	t.Event.Action = rule
	t.Event.Dataset = event.DatasetThreat
	t.Event.Severity = event.SeverityHigh.Score()
	t.Rule = &event.Rule{ID: rule, Name: "Netcat listener", Ruleset: "whalewatch-default"}
	t.Threat = &event.Threat{
		Framework: event.FrameworkMITRE,
		Technique: event.Technique{ID: []string{"T1059"}, Name: []string{"Command and Scripting Interpreter"}},
		Tactic:    event.Tactic{ID: []string{"TA0002"}, Name: []string{"Execution"}},
	}
	t.Whalewatch = event.Whalewatch{SchemaVersion: event.SchemaVersion, Severity: event.SeverityHigh, Trigger: event.NewID()}
	return t
}

func marshal(tb testing.TB, e *event.Event) string {
	tb.Helper()
	b, err := event.Marshal(e)
	require.NoError(tb, err)
	return string(b)
}

// docsOf prepares events as the pipeline does with the payloads their
// publishers send.
func docsOf(tb testing.TB, events ...*event.Event) []Doc {
	tb.Helper()
	p := newPreparer("default", Version(), newDocumentsCounter(prometheus.NewRegistry()))
	out := make([]Doc, len(events))
	for i, e := range events {
		d, err := p.prepare([]byte(marshal(tb, e)))
		require.NoError(tb, err)
		out[i] = d
	}
	return out
}

// storedJSON is the document the indexer stores for e, published as it is.
func storedJSON(tb testing.TB, e *event.Event) string {
	tb.Helper()
	d := docsOf(tb, e)[0]
	return string(d.Prefix) + string(d.Body)
}

// templateOf is the index template a data stream of dataset gets.
func templateOf(dataset string) string {
	switch dataset {
	case event.DatasetThreat:
		return "whalewatch-threat"
	case event.DatasetResponse:
		return "whalewatch-response"
	}
	return IndexTemplate
}
