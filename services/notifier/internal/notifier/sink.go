package notifier

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/slack-go/slack"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
)

// Sink delivers alerts somewhere people read them.
//
// Send delivers one threat and returns nil only once the destination has
// accepted it: the caller then acks the message. Otherwise it returns
//
//   - a bus.Permanent error when the alert can never be delivered as it is
//     (Slack rejected the payload, the channel or the credentials): the
//     message is dead-lettered;
//   - any other error when a retry may succeed (Slack 5xx, network failure,
//     timeout): the message is redelivered later. When the destination asked
//     to slow down, the error carries the wait (see RetryAfter) and the
//     caller sends nothing before it has passed.
//
// Send must be safe to call again for the same threat after an error.
// Close releases the sink's resources once no Send is running.
//
// A sink sees one threat at a time. Throttling or grouping bursts of threats
// will be a Sink that wraps another, so neither the consumer nor the Slack
// sinks change.
type Sink interface {
	Send(ctx context.Context, e *event.Event) error
	Close(ctx context.Context) error
}

// RetryAfter returns how long the destination asked the caller to wait
// before sending again, if err says so.
func RetryAfter(err error) (time.Duration, bool) {
	if rl, ok := errors.AsType[*slack.RateLimitedError](err); ok {
		return rl.RetryAfter, true
	}
	return 0, false
}

// permanentCodes are the Slack error codes that no retry can fix. The first
// group is what webhooks and chat.postMessage answer to a bad payload, the
// second to a bad destination or credentials.
var permanentCodes = map[string]bool{
	"invalid_blocks": true, "invalid_blocks_format": true, "invalid_payload": true, "no_text": true,
	"msg_too_long": true, "msg_blocks_too_long": true, "too_many_attachments": true, "invalid_arguments": true,
	"invalid_json": true, "invalid_form_data": true, "json_not_object": true,

	"channel_not_found": true, "not_in_channel": true, "is_archived": true, "channel_is_archived": true,
	"invalid_auth": true, "not_authed": true, "account_inactive": true, "token_revoked": true,
	"token_expired": true, "missing_scope": true, "no_permission": true, "restricted_action": true,
	"no_service": true, "no_service_id": true, "invalid_token": true, "action_prohibited": true,
	"posting_to_general_channel_denied": true, "team_disabled": true, "no_team": true,
}

// transientCodes are the Slack error codes that mean "try again later".
var transientCodes = map[string]bool{
	"internal_error": true, "fatal_error": true, "service_unavailable": true,
	"request_timeout": true, "ratelimited": true, "rate_limited": true,
}

// classify decides whether a failed post can succeed on retry. code is the
// Slack error code, when Slack answered one. An error Slack answered with a
// code it does not document as transient is permanent; an error without an
// answer (network, timeout, cancellation) is transient.
func classify(err error, code string) error {
	if err == nil {
		return nil
	}
	if _, ok := RetryAfter(err); ok {
		return err
	}
	switch {
	case permanentCodes[code]:
		return bus.Permanent(err)
	case transientCodes[code]:
		return err
	}
	if sc, ok := errors.AsType[slack.StatusCodeError](err); ok {
		if sc.Code == http.StatusRequestTimeout || sc.Retryable() {
			return err
		}
		return bus.Permanent(err)
	}
	if _, ok := errors.AsType[slack.SlackErrorResponse](err); ok {
		return bus.Permanent(err)
	}
	return err
}

// sinkError is an error whose message has the sink's secrets (webhook URL,
// token) replaced, and the answer Slack gave added; it unwraps to the error
// slack-go returned, for classification.
type sinkError struct {
	msg string
	err error
}

func (e *sinkError) Error() string { return e.msg }
func (e *sinkError) Unwrap() error { return e.err }

// redact wraps err with a message naming what failed, with every secret
// replaced by "[redacted]" and Slack's answer appended when there is one.
func redact(what string, err error, answer string, secrets ...string) error {
	msg := err.Error()
	for _, s := range secrets {
		if s != "" {
			msg = strings.ReplaceAll(msg, s, "[redacted]")
		}
	}
	if answer != "" {
		msg += ": Slack answered " + fmt.Sprintf("%q", answer)
	}
	return &sinkError{msg: what + ": " + msg, err: err}
}

// tee sends to each sink in order and stops at the first failure, so a
// retried alert reaches a later sink once. The console goes last: it cannot
// fail for reasons a retry fixes, and printing before Slack accepted would
// print again on every retry.
type tee []Sink

func (t tee) Send(ctx context.Context, e *event.Event) error {
	for _, s := range t {
		if err := s.Send(ctx, e); err != nil {
			return err
		}
	}
	return nil
}

func (t tee) Close(ctx context.Context) error {
	var errs []error
	for _, s := range t {
		errs = append(errs, s.Close(ctx))
	}
	return errors.Join(errs...)
}

func (t tee) String() string {
	names := make([]string, len(t))
	for i, s := range t {
		names[i] = fmt.Sprint(s)
	}
	return strings.Join(names, ", ")
}

// NewSink builds the sinks cfg asks for: Slack (webhook or Web API), then the
// console on stdout.
func NewSink(cfg Config, stdout io.Writer) (Sink, error) {
	var sinks tee
	switch {
	case cfg.Slack.WebhookURL != "":
		sinks = append(sinks, NewWebhook(cfg.Slack.WebhookURL, cfg.Slack.Timeout))
	case cfg.Slack.BotToken != "":
		sinks = append(sinks, NewWebAPI(cfg.Slack.BotToken, cfg.Slack.Channel, cfg.Slack.APIURL, cfg.Slack.Timeout))
	}
	if cfg.Console {
		sinks = append(sinks, NewConsole(stdout))
	}
	switch len(sinks) {
	case 0:
		return nil, errors.New("no alert destination configured")
	case 1:
		return sinks[0], nil
	}
	return sinks, nil
}
