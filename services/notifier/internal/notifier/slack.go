package notifier

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/services/notifier/internal/gate"
	"github.com/whalewatch/whalewatch/services/notifier/internal/render"
)

// maxAnswer bounds how much of an answer is read.
const maxAnswer = 4096

// poster sends JSON bodies to one URL with a bounded client.
type poster struct {
	client *http.Client
}

func newPoster(timeout time.Duration) poster {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	return poster{client: &http.Client{Timeout: timeout, Transport: tr}}
}

// post sends body and returns the answer's status, Retry-After and body. A
// failed request's error is stripped of the URL, which may be a secret.
func (p poster) post(ctx context.Context, rawURL, bearer string, body []byte) (int, time.Duration, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, rawURL, bytes.NewReader(body))
	if err != nil {
		return 0, 0, nil, errors.New("bad destination URL")
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		if ue, ok := errors.AsType[*url.Error](err); ok {
			err = ue.Err // url.Error quotes the URL
		}
		return 0, 0, nil, err
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	wait := time.Duration(0)
	if resp.StatusCode == http.StatusTooManyRequests {
		wait = gate.ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	}
	return resp.StatusCode, wait, answer, nil
}

func (p poster) close() { p.client.CloseIdleConnections() }

// renderSlack turns a notice into a Slack message.
func renderSlack(n Notice, o render.Options) render.Message {
	switch n.Kind {
	case render.KindGroup:
		o.Since = n.Since
		return render.Group(n.Event, n.Count, n.Window, o)
	case render.KindDigest:
		return render.Digest(n.Digest, o)
	}
	o.Count, o.Since = n.Count, n.Since
	return render.Slack(n.Event, o)
}

// Webhook posts to a Slack incoming webhook. The webhook URL is a secret: it
// never appears in errors or logs.
type Webhook struct {
	url    string
	opts   render.Options
	poster poster
}

// NewWebhook returns a sink that posts to the incoming webhook at rawURL,
// each request bounded by timeout.
func NewWebhook(rawURL string, timeout time.Duration, o render.Options) *Webhook {
	return &Webhook{url: rawURL, opts: o, poster: newPoster(timeout)}
}

// Name is the destination's name.
func (w *Webhook) Name() string { return DestSlackWebhook }

// Post posts n. Slack answers a webhook with "ok", or with an error code as
// the body of a 4xx (invalid_blocks, no_text, channel_not_found, ...).
func (w *Webhook) Post(ctx context.Context, n Notice) (string, error) {
	body, err := renderSlack(n, w.opts).Webhook()
	if err != nil {
		return "", err
	}
	status, wait, answer, err := w.poster.post(ctx, w.url, "", body)
	code := ""
	if status != http.StatusOK && status != 0 {
		code = slackCode(answer)
	}
	return "", classify("posting to Slack webhook", status, code, wait, err)
}

// slackCode is the error code a webhook answered, when the answer is one.
func slackCode(answer []byte) string {
	s := strings.TrimSpace(string(answer))
	if s == "" || len(s) > 64 || strings.ContainsFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r == '_' || r >= '0' && r <= '9')
	}) {
		return ""
	}
	return s
}

// Close closes idle connections.
func (w *Webhook) Close(context.Context) error {
	w.poster.close()
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

// WebAPI posts with the Web API's chat.postMessage as a bot with the
// chat:write scope, and updates its messages with chat.update. The token
// never appears in errors or logs.
type WebAPI struct {
	base    string
	token   string
	channel string
	opts    render.Options
	poster  poster
}

// NewWebAPI returns a sink that posts to channel with token, at the Web API
// whose base URL is apiURL (https://slack.com/api/ in production), each
// request bounded by timeout.
func NewWebAPI(token, channel, apiURL string, timeout time.Duration, o render.Options) *WebAPI {
	if !strings.HasSuffix(apiURL, "/") {
		apiURL += "/"
	}
	return &WebAPI{base: apiURL, token: token, channel: channel, opts: o, poster: newPoster(timeout)}
}

// Name is the destination's name.
func (w *WebAPI) Name() string { return DestSlackAPI }

// apiAnswer is what every Web API method answers.
type apiAnswer struct {
	OK      bool   `json:"ok"`
	Error   string `json:"error"`
	Channel string `json:"channel"`
	TS      string `json:"ts"`
}

func (w *WebAPI) call(ctx context.Context, method string, body []byte) (apiAnswer, error) {
	what := "calling Slack " + method
	status, wait, raw, err := w.poster.post(ctx, w.base+method, w.token, body)
	var a apiAnswer
	if err == nil && status == http.StatusOK {
		if jerr := json.Unmarshal(raw, &a); jerr != nil {
			return a, classify(what, status, "", 0, errors.New("answer is not JSON"))
		}
		if !a.OK && a.Error == "" {
			a.Error = "unknown_error"
		}
	} else if err == nil {
		_ = json.Unmarshal(raw, &a)
	}
	if a.Error == "ratelimited" && wait == 0 {
		wait = gate.DefaultRetryAfter
	}
	return a, classify(what, status, a.Error, wait, err)
}

// Post posts n with chat.postMessage; the reference is "<channel id>/<ts>".
func (w *WebAPI) Post(ctx context.Context, n Notice) (string, error) {
	body, err := renderSlack(n, w.opts).API(w.channel, "")
	if err != nil {
		return "", err
	}
	a, err := w.call(ctx, "chat.postMessage", body)
	if err != nil {
		return "", err
	}
	return a.Channel + "/" + a.TS, nil
}

// Update replaces the message ref with n, by chat.update.
func (w *WebAPI) Update(ctx context.Context, ref string, n Notice) error {
	channel, ts, ok := strings.Cut(ref, "/")
	if !ok {
		return errors.New("bad message reference")
	}
	body, err := renderSlack(n, w.opts).API(channel, ts)
	if err != nil {
		return err
	}
	_, err = w.call(ctx, "chat.update", body)
	return err
}

// Close closes idle connections.
func (w *WebAPI) Close(context.Context) error {
	w.poster.close()
	return nil
}

// String names the sink without its token.
func (w *WebAPI) String() string { return "slack-api(" + w.channel + ")" }

// JSONWebhook posts each notice as a JSON document to a URL (a SIEM, a
// chat-ops bot, an automation): {"kind":"alert","threats":1,"event":{...}},
// or a digest's figures. The URL may hold a secret; it never appears in
// errors or logs.
type JSONWebhook struct {
	url    string
	poster poster
}

// NewJSONWebhook returns a sink that posts to rawURL.
func NewJSONWebhook(rawURL string, timeout time.Duration) *JSONWebhook {
	return &JSONWebhook{url: rawURL, poster: newPoster(timeout)}
}

// Name is the destination's name.
func (j *JSONWebhook) Name() string { return DestJSONWebhook }

// jsonNotice is the document a JSONWebhook posts.
type jsonNotice struct {
	Kind    string              `json:"kind"`
	Threats int                 `json:"threats"`
	Event   *event.Event        `json:"event,omitempty"`
	Since   *time.Time          `json:"since,omitempty"`
	Digest  *render.DigestStats `json:"digest,omitempty"`
}

// Post posts n; any 2xx is success.
func (j *JSONWebhook) Post(ctx context.Context, n Notice) (string, error) {
	doc := jsonNotice{Kind: n.Kind, Threats: n.Count, Event: n.Event}
	if n.Kind == render.KindDigest {
		doc.Threats, doc.Event, doc.Digest = n.Digest.Count, nil, &n.Digest
	}
	if !n.Since.IsZero() {
		doc.Since = &n.Since
	}
	body, err := json.Marshal(doc)
	if err != nil {
		return "", err
	}
	status, wait, _, err := j.poster.post(ctx, j.url, "", body)
	if err == nil && status >= 200 && status < 300 {
		return "", nil
	}
	return "", classify("posting to the JSON webhook", status, "", wait, err)
}

// Close closes idle connections.
func (j *JSONWebhook) Close(context.Context) error {
	j.poster.close()
	return nil
}

// String names the sink without its URL's path.
func (j *JSONWebhook) String() string {
	host := "?"
	if u, err := url.Parse(j.url); err == nil {
		host = u.Host
	}
	return "json-webhook(" + host + ")"
}
