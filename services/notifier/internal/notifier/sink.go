package notifier

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/services/notifier/internal/render"
)

// Notice is one thing a destination is told: a threat (Kind alert), the
// repeats of a threat posted earlier (group), or the threats that were not
// posted one by one (digest).
type Notice struct {
	Kind string // render.KindAlert, KindGroup or KindDigest
	// Event is the threat (alert) or the first of the group (group).
	Event *event.Event
	// Count is how many threats the notice stands for: 1 for a new alert, the
	// total for an alert updated with its repeats, the repeats for a group.
	Count int
	// Since is when the group started; Window its length.
	Since  time.Time
	Window time.Duration
	Digest render.DigestStats
}

// Alert is the notice of one threat.
func Alert(e *event.Event) Notice { return Notice{Kind: render.KindAlert, Event: e, Count: 1} }

// Sink delivers notices somewhere people (or programs) read them.
//
// Post delivers one notice and returns nil only once the destination has
// accepted it, with a reference to the message when the destination can
// update it (the Web API's channel and ts), else "". Otherwise it returns
//
//   - a bus.Permanent error when the notice can never be delivered as it is
//     (Slack rejected the payload, the channel or the credentials);
//   - an error for which RetryAfter reports true when the destination asked
//     to slow down (HTTP 429), with the wait it asked for;
//   - any other error when a retry may succeed (5xx, network failure,
//     timeout). The destination may have accepted the notice anyway (a lost
//     answer): retrying may then repeat it.
//
// Name names the destination, for metrics, claim keys and routes; String
// describes it without secrets. Close releases the sink's resources once no
// Post is running.
type Sink interface {
	Name() string
	Post(ctx context.Context, n Notice) (ref string, err error)
	Close(ctx context.Context) error
}

// Updater is a Sink that can update a message it posted (chat.update).
type Updater interface {
	Update(ctx context.Context, ref string, n Notice) error
}

// Destination names, the values of routes' to: lists.
const (
	DestConsole      = "console"
	DestSlackWebhook = "slack-webhook"
	DestSlackAPI     = "slack-api"
	DestJSONWebhook  = "json-webhook"
)

// SendError is a failed delivery, with what the destination answered. Its
// message never holds a secret.
type SendError struct {
	msg string
	// Status is the HTTP status (0 without an answer); Code the Slack error
	// code, when there is one.
	Status int
	Code   string
	// Limited is set on a 429; Wait is its Retry-After.
	Limited bool
	Wait    time.Duration
	err     error
}

func (e *SendError) Error() string { return e.msg }
func (e *SendError) Unwrap() error { return e.err }

// RetryAfter returns how long the destination asked the caller to wait
// before sending again, if err says so.
func RetryAfter(err error) (time.Duration, bool) {
	if se, ok := errors.AsType[*SendError](err); ok && se.Limited {
		return se.Wait, true
	}
	return 0, false
}

// permanentCodes are the Slack error codes that no retry can fix. The first
// group is what webhooks and chat.postMessage answer to a bad payload, the
// second to a bad destination or credentials.
var permanentCodes = map[string]bool{
	"invalid_blocks": true, "invalid_blocks_format": true, "invalid_payload": true, "no_text": true,
	"msg_too_long": true, "msg_blocks_too_long": true, "too_many_attachments": true, "invalid_arguments": true,
	"invalid_json": true, "invalid_form_data": true, "json_not_object": true, "invalid_attachments": true,
	"invalid_metadata_format": true, "invalid_metadata_schema": true, "message_not_found": true, "cant_update_message": true,

	"channel_not_found": true, "not_in_channel": true, "is_archived": true, "channel_is_archived": true,
	"invalid_auth": true, "not_authed": true, "account_inactive": true, "token_revoked": true,
	"token_expired": true, "missing_scope": true, "no_permission": true, "restricted_action": true,
	"no_service": true, "no_service_id": true, "invalid_token": true, "action_prohibited": true,
	"posting_to_general_channel_denied": true, "team_disabled": true, "no_team": true,
}

// transientCodes are the Slack error codes that mean "try again later".
var transientCodes = map[string]bool{
	"internal_error": true, "fatal_error": true, "service_unavailable": true,
	"request_timeout": true,
}

// classify turns an answer into nil or an error: 2xx with no Slack error
// code is success; a 429 or a ratelimited code is a rate limit; 5xx, 408,
// the transient codes and no answer at all are transient; every other code
// and 4xx is permanent.
func classify(what string, status int, code string, wait time.Duration, err error) error {
	se := &SendError{Status: status, Code: code, err: err}
	switch {
	case err != nil:
		se.msg = what + ": " + err.Error()
		return se
	case status == 429 || code == "ratelimited" || code == "rate_limited":
		se.Limited, se.Wait = true, wait
		se.msg = fmt.Sprintf("%s: rate limited (HTTP %d), retry after %v", what, status, wait)
		return se
	case status >= 200 && status < 300 && code == "":
		return nil
	}
	se.msg = fmt.Sprintf("%s: HTTP %d", what, status)
	if code != "" {
		se.msg += fmt.Sprintf(": destination answered %q", code)
	}
	switch {
	case transientCodes[code], status >= 500, status == 408:
		return se
	case permanentCodes[code], status >= 400, code != "":
		return bus.Permanent(se)
	}
	return se
}
