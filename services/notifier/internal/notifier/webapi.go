package notifier

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/slack-go/slack"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/services/notifier/internal/render"
)

// WebAPI posts alerts with the Web API's chat.postMessage, as a bot with the
// chat:write scope. The token never appears in errors or logs.
type WebAPI struct {
	api     *slack.Client
	http    *http.Client
	token   string
	channel string
}

// NewWebAPI returns a sink that posts to channel with token, at the Web API
// whose base URL is apiURL (slack.APIURL in production), each request bounded
// by timeout. slack-go's own retries stay off: redelivery is the retry.
func NewWebAPI(token, channel, apiURL string, timeout time.Duration) *WebAPI {
	if !strings.HasSuffix(apiURL, "/") {
		apiURL += "/"
	}
	hc := &http.Client{Timeout: timeout, Transport: http.DefaultTransport.(*http.Transport).Clone()}
	return &WebAPI{
		api:     slack.New(token, slack.OptionAPIURL(apiURL), slack.OptionHTTPClient(hc)),
		http:    hc,
		token:   token,
		channel: channel,
	}
}

// Send posts e to the channel.
func (w *WebAPI) Send(ctx context.Context, e *event.Event) error {
	m := render.Slack(e)
	_, _, err := w.api.PostMessageContext(ctx, w.channel,
		slack.MsgOptionText(m.Text, false), // render escaped it already
		slack.MsgOptionBlocks(m.Blocks...),
		slack.MsgOptionDisableLinkUnfurl(),
		slack.MsgOptionDisableMediaUnfurl(),
	)
	if err == nil {
		return nil
	}
	code := ""
	if se, ok := errors.AsType[slack.SlackErrorResponse](err); ok {
		code = se.Err
	}
	return classify(redact("posting to Slack chat.postMessage", err, "", w.token), code)
}

// Close closes idle connections.
func (w *WebAPI) Close(context.Context) error {
	w.http.CloseIdleConnections()
	return nil
}

// String names the sink without its token.
func (w *WebAPI) String() string { return "slack-api(" + w.channel + ")" }
