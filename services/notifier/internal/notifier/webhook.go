package notifier

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/slack-go/slack"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/services/notifier/internal/render"
)

// Webhook posts alerts to a Slack incoming webhook. The webhook URL is a
// secret: it never appears in errors or logs.
type Webhook struct {
	url    string
	client *http.Client
}

// NewWebhook returns a sink that posts to the incoming webhook at rawURL,
// each request bounded by timeout.
func NewWebhook(rawURL string, timeout time.Duration) *Webhook {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	return &Webhook{url: rawURL, client: &http.Client{Timeout: timeout, Transport: answerRecorder{tr}}}
}

// Send posts e. Slack answers a webhook with "ok" or with an error code as
// the body of a 4xx (invalid_blocks, no_text, channel_not_found, ...), which
// slack-go does not return; answerRecorder keeps it for the error message and
// the classification.
func (w *Webhook) Send(ctx context.Context, e *event.Event) error {
	m := render.Slack(e)
	no := false
	msg := &slack.WebhookMessage{
		Text:        m.Text,
		Blocks:      &slack.Blocks{BlockSet: m.Blocks},
		UnfurlLinks: &no,
		UnfurlMedia: &no,
	}
	var answer string
	ctx = context.WithValue(ctx, answerKey{}, &answer)
	if err := slack.PostWebhookCustomHTTPContext(ctx, w.url, w.client, msg); err != nil {
		return classify(redact("posting to Slack webhook", err, answer, w.url), answer)
	}
	return nil
}

// Close closes idle connections.
func (w *Webhook) Close(context.Context) error {
	w.client.CloseIdleConnections()
	return nil
}

// String names the sink without its secret path.
func (w *Webhook) String() string {
	host := "?"
	if u, err := url.Parse(w.url); err == nil {
		host = u.Host
	}
	return "slack-webhook(" + host + ")"
}

// answerKey carries a *string for answerRecorder in a request's context.
type answerKey struct{}

// maxAnswer bounds how much of an error body is kept.
const maxAnswer = 256

// answerRecorder stores the start of a non-200 response body in the *string
// the request's context carries, and gives the response on with its body
// intact.
type answerRecorder struct{ next http.RoundTripper }

func (t answerRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if err != nil || resp.StatusCode == http.StatusOK {
		return resp, err
	}
	dst, ok := req.Context().Value(answerKey{}).(*string)
	if !ok {
		return resp, nil
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	_ = resp.Body.Close()
	*dst = event.Truncate(string(bytes.TrimSpace(b)), maxAnswer)
	resp.Body = io.NopCloser(bytes.NewReader(b))
	return resp, nil
}
