package notifier

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/services/notifier/internal/render"
	"github.com/whalewatch/whalewatch/testkit/slackstub"
)

// threat is a netcat threat as the detector publishes it.
func threat(id string, sev event.Severity) *event.Event {
	return &event.Event{
		Timestamp: time.Date(2025, 3, 1, 12, 30, 5, 0, time.UTC),
		Event: event.Meta{
			ID: id, Kind: event.KindAlert, Dataset: event.DatasetThreat, Module: event.Module,
			Severity: sev.Score(), Action: "suspicious-tool-netcat",
		},
		Host: event.Host{Name: "docker-host-1"},
		Container: &event.Container{
			ID: "0123456789abcdef0123456789abcdef", Name: "web-" + id, Image: event.Image{Name: "nginx:1.27"},
		},
		Process: &event.Process{PID: 42, Name: "nc", CommandLine: "nc -l -p 4444"},
		Rule: &event.Rule{
			ID: "suspicious-tool-netcat", Name: "Netcat executed in a container",
			Description: "nc ran in a container.",
		},
		Threat: &event.Threat{
			Framework: event.FrameworkMITRE,
			Technique: event.Technique{ID: []string{"T1095"}, Name: []string{"Non-Application Layer Protocol"}},
			Tactic:    event.Tactic{ID: []string{"TA0011"}, Name: []string{"Command and Control"}},
		},
		Whalewatch: event.Whalewatch{SchemaVersion: event.SchemaVersion, Severity: sev},
	}
}

// failure is a way a sink's destination can fail.
type failure int

const (
	failTransient   failure = iota // 5xx, a failing writer
	failRateLimited                // 429 with Retry-After: 1
	failPermanent                  // Slack rejected the payload
)

// sinkFixture is one Sink implementation under the contract test.
type sinkFixture struct {
	sink Sink
	// delivered returns the text of each alert the destination accepted.
	delivered func() []string
	// inject makes the next Send fail as f, or reports false when the
	// destination cannot fail that way.
	inject func(f failure) bool
	// slack says the destination reads mrkdwn, where <!channel> pings a channel.
	slack bool
}

func stubDelivered(s *slackstub.Server) func() []string {
	return func() []string {
		var out []string
		for _, m := range s.Messages() {
			out = append(out, m.AllText())
		}
		return out
	}
}

func stubInject(s *slackstub.Server) func(failure) bool {
	return func(f failure) bool {
		switch f {
		case failTransient:
			s.FailNext(1, http.StatusServiceUnavailable)
		case failRateLimited:
			s.FailNext(1, http.StatusTooManyRequests)
		case failPermanent:
			s.RejectNext(1, "invalid_blocks")
		}
		return true
	}
}

// failingWriter fails the writes it is told to.
type failingWriter struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	fails int
}

func (w *failingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fails > 0 {
		w.fails--
		return 0, errors.New("disk full")
	}
	return w.buf.Write(p)
}

func (w *failingWriter) lines() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.FieldsFunc(w.buf.String(), func(r rune) bool { return r == '\n' })
}

var sinkFixtures = map[string]func(t *testing.T) sinkFixture{
	"webhook": func(t *testing.T) sinkFixture {
		s := slackstub.New(t)
		return sinkFixture{NewWebhook(s.WebhookURL(), 5*time.Second, render.Options{}), stubDelivered(s), stubInject(s), true}
	},
	"webapi": func(t *testing.T) sinkFixture {
		s := slackstub.New(t)
		return sinkFixture{NewWebAPI(slackstub.Token, slackstub.ChannelID, s.APIURL(), 5*time.Second, render.Options{}), stubDelivered(s), stubInject(s), true}
	},
	"console": func(t *testing.T) sinkFixture {
		w := &failingWriter{}
		return sinkFixture{NewConsole(w), w.lines, func(f failure) bool {
			if f != failTransient {
				return false
			}
			w.mu.Lock()
			w.fails = 1
			w.mu.Unlock()
			return true
		}, false}
	},
	"json-webhook": func(t *testing.T) sinkFixture {
		j := newJSONReceiver(t)
		return sinkFixture{NewJSONWebhook(j.srv.URL+"/hook/SECRET", 5*time.Second), j.delivered, j.inject, false}
	},
}

// TestSinkContract is the contract every Sink meets.
func TestSinkContract(t *testing.T) {
	t.Parallel()
	for name, newFixture := range sinkFixtures {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()

			t.Run("delivers what a reader needs", func(t *testing.T) {
				f := newFixture(t)
				defer f.sink.Close(ctx)
				require.NoError(t, postAlert(ctx, f.sink, threat("a1", event.SeverityHigh)))
				got := f.delivered()
				require.Len(t, got, 1)
				for _, want := range []string{"web-a1", "nginx:1.27", "docker-host-1", "suspicious-tool-netcat", "nc -l -p 4444"} {
					require.Contains(t, got[0], want)
				}
			})

			t.Run("transient failure is retryable", func(t *testing.T) {
				f := newFixture(t)
				defer f.sink.Close(ctx)
				require.True(t, f.inject(failTransient))
				err := postAlert(ctx, f.sink, threat("a2", event.SeverityHigh))
				require.Error(t, err)
				require.False(t, bus.IsPermanent(err), "%v", err)
				_, limited := RetryAfter(err)
				require.False(t, limited)
				require.Empty(t, f.delivered())
				require.NoError(t, postAlert(ctx, f.sink, threat("a2", event.SeverityHigh)), "the retry succeeds")
				require.Len(t, f.delivered(), 1)
			})

			t.Run("rate limit carries Retry-After", func(t *testing.T) {
				f := newFixture(t)
				defer f.sink.Close(ctx)
				if !f.inject(failRateLimited) {
					t.Skip("this destination has no rate limit")
				}
				err := postAlert(ctx, f.sink, threat("a3", event.SeverityHigh))
				require.Error(t, err)
				require.False(t, bus.IsPermanent(err))
				d, ok := RetryAfter(err)
				require.True(t, ok, "%v", err)
				require.Equal(t, time.Second, d)
			})

			t.Run("rejection is permanent", func(t *testing.T) {
				f := newFixture(t)
				defer f.sink.Close(ctx)
				if !f.inject(failPermanent) {
					t.Skip("this destination rejects nothing")
				}
				err := postAlert(ctx, f.sink, threat("a4", event.SeverityHigh))
				require.True(t, bus.IsPermanent(err), "%v", err)
				if f.slack {
					require.Contains(t, err.Error(), "invalid_blocks")
				}
				require.Empty(t, f.delivered())
			})

			t.Run("cancelled context is retryable", func(t *testing.T) {
				f := newFixture(t)
				defer f.sink.Close(ctx)
				cctx, cancel := context.WithCancel(ctx)
				cancel()
				err := postAlert(cctx, f.sink, threat("a5", event.SeverityHigh))
				require.Error(t, err)
				require.False(t, bus.IsPermanent(err))
				require.Empty(t, f.delivered())
			})

			t.Run("hostile text is delivered escaped", func(t *testing.T) {
				f := newFixture(t)
				defer f.sink.Close(ctx)
				e := threat("a6", event.SeverityCritical)
				e.Process.CommandLine = "<!channel> ``` $(rm -rf /)\x1b[2J\n" + strings.Repeat("A", 8000)
				require.NoError(t, postAlert(ctx, f.sink, e))
				got := f.delivered()
				require.Len(t, got, 1, "one alert, one message (one line)")
				require.Contains(t, got[0], "$(rm -rf /)")
				require.NotContains(t, got[0], "\x1b"+"[2J", "terminal escapes are removed or made visible")
				if f.slack {
					require.NotContains(t, got[0], "<!channel>")
				}
			})
		})
	}
}

// TestSlackErrors maps what Slack answers to retry or dead letter, for both
// Slack sinks.
func TestSlackErrors(t *testing.T) {
	t.Parallel()
	type sinkKind struct {
		name string
		new  func(s *slackstub.Server) Sink
	}
	kinds := []sinkKind{
		{"webhook", func(s *slackstub.Server) Sink { return NewWebhook(s.WebhookURL(), 5*time.Second, render.Options{}) }},
		{"webapi", func(s *slackstub.Server) Sink {
			return NewWebAPI(slackstub.Token, slackstub.ChannelID, s.APIURL(), 5*time.Second, render.Options{})
		}},
	}
	tests := []struct {
		code      string // RejectNext(code) when set
		status    int    // FailNext(status) otherwise
		permanent bool
	}{
		{code: "invalid_blocks", permanent: true},
		{code: "invalid_payload", permanent: true},
		{code: "channel_not_found", permanent: true},
		{code: "not_in_channel", permanent: true},
		{code: "invalid_auth", permanent: true},
		{code: "no_text", permanent: true},
		{code: "some_future_error", permanent: true},
		{code: "internal_error"},
		{code: "service_unavailable"},
		{status: 400, permanent: true},
		{status: 403, permanent: true},
		{status: 404, permanent: true},
		{status: 408},
		{status: 429},
		{status: 500},
		{status: 502},
		{status: 503},
	}
	for _, k := range kinds {
		for _, tt := range tests {
			name := k.name + "/" + tt.code
			if tt.code == "" {
				name = k.name + "/" + http.StatusText(tt.status)
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				s := slackstub.New(t)
				if tt.code != "" {
					s.RejectNext(1, tt.code)
				} else {
					s.FailNext(1, tt.status)
				}
				err := postAlert(t.Context(), k.new(s), threat("e1", event.SeverityHigh))
				require.Error(t, err)
				require.Equal(t, tt.permanent, bus.IsPermanent(err), "%v", err)
				if tt.code != "" {
					require.Contains(t, err.Error(), tt.code, "the error names Slack's answer")
				}
				require.NotContains(t, err.Error(), slackstub.Token)
				require.NotContains(t, err.Error(), slackstub.WebhookPath)
			})
		}
	}
}

func TestWebAPIWrongToken(t *testing.T) {
	t.Parallel()
	s := slackstub.New(t)
	err := postAlert(t.Context(), NewWebAPI("xoxb-wrong-token", slackstub.ChannelID, s.APIURL(), 5*time.Second, render.Options{}), threat("e1", event.SeverityHigh))
	require.True(t, bus.IsPermanent(err), "%v", err)
	require.ErrorContains(t, err, "invalid_auth")
	require.NotContains(t, err.Error(), "xoxb-wrong-token")

	err = postAlert(t.Context(), NewWebAPI(slackstub.Token, "C404", s.APIURL(), 5*time.Second, render.Options{}), threat("e1", event.SeverityHigh))
	require.True(t, bus.IsPermanent(err), "%v", err)
	require.ErrorContains(t, err, "channel_not_found")
}

func TestWebhookNeverRevealsItsURL(t *testing.T) {
	t.Parallel()
	s := slackstub.New(t)
	secret := s.URL() + "/services/T0SECRET/B0SECRET/xyzSECRETxyz"

	w := NewWebhook(secret, 5*time.Second, render.Options{})
	err := postAlert(t.Context(), w, threat("e1", event.SeverityHigh))
	require.True(t, bus.IsPermanent(err), "an unknown webhook is permanent: %v", err)
	require.ErrorContains(t, err, "no_service")
	require.NotContains(t, err.Error(), "SECRET")
	require.NotContains(t, w.String(), "SECRET")

	s.Close()
	err = postAlert(t.Context(), w, threat("e1", event.SeverityHigh))
	require.Error(t, err)
	require.False(t, bus.IsPermanent(err), "a connection failure is transient: %v", err)
	require.NotContains(t, err.Error(), "SECRET")
}

func TestNewSinks(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	sinks, err := NewSinks(Config{Console: true, Slack: SlackConfig{WebhookURL: secretWebhook, BotToken: "xoxb-1", Channel: "C1", APIURL: "https://slack.com/api/", Timeout: time.Second}, JSONWebhookURL: "https://siem.example.com/x"}, &out)
	require.NoError(t, err)
	var names []string
	for _, s := range sinks {
		names = append(names, fmt.Sprint(s))
	}
	require.Equal(t, []string{"console", "slack-webhook(hooks.slack.com)", "slack-api(C1)", "json-webhook(siem.example.com)"}, names)
	_, err = NewSinks(Config{}, &out)
	require.Error(t, err)
}

// postAlert posts one threat.
func postAlert(ctx context.Context, s Sink, e *event.Event) error {
	_, err := s.Post(ctx, Alert(e))
	return err
}

// jsonReceiver is a generic JSON webhook endpoint for tests.
type jsonReceiver struct {
	srv   *httptest.Server
	mu    sync.Mutex
	docs  []jsonNotice
	fails []int
}

func newJSONReceiver(t *testing.T) *jsonReceiver {
	j := &jsonReceiver{}
	j.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		j.mu.Lock()
		defer j.mu.Unlock()
		if len(j.fails) > 0 {
			status := j.fails[0]
			j.fails = j.fails[1:]
			if status == http.StatusTooManyRequests {
				w.Header().Set("Retry-After", "1")
			}
			w.WriteHeader(status)
			return
		}
		var d jsonNotice
		if err := json.NewDecoder(r.Body).Decode(&d); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		j.docs = append(j.docs, d)
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(j.srv.Close)
	return j
}

func (j *jsonReceiver) received() []jsonNotice {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]jsonNotice(nil), j.docs...)
}

func (j *jsonReceiver) delivered() []string {
	var out []string
	for _, d := range j.received() {
		b, _ := json.Marshal(d.Event)
		out = append(out, string(b))
	}
	return out
}

func (j *jsonReceiver) inject(f failure) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	switch f {
	case failTransient:
		j.fails = append(j.fails, http.StatusBadGateway)
	case failRateLimited:
		j.fails = append(j.fails, http.StatusTooManyRequests)
	case failPermanent:
		j.fails = append(j.fails, http.StatusBadRequest)
	}
	return true
}
