package render

import (
	"encoding/json"

	"github.com/slack-go/slack"
)

// payload is the JSON body of a post. The blocks go in an attachment, for its
// colour bar; text is the notification's fallback. parse "none" and the
// unfurl flags keep Slack from linking or previewing anything on its own:
// the only links are the ones render writes.
type payload struct {
	Channel     string       `json:"channel,omitempty"`
	TS          string       `json:"ts,omitempty"`
	Text        string       `json:"text"`
	Parse       string       `json:"parse"`
	Attachments []attachment `json:"attachments"`
	UnfurlLinks bool         `json:"unfurl_links"`
	UnfurlMedia bool         `json:"unfurl_media"`
	Metadata    metadata     `json:"metadata"`
}

type attachment struct {
	Color    string        `json:"color"`
	Fallback string        `json:"fallback"`
	Blocks   []slack.Block `json:"blocks"`
}

// metadata is Slack message metadata: what the message is, for tools that
// read the channel (and for tests that count threats).
type metadata struct {
	EventType string `json:"event_type"`
	Payload   struct {
		Threats int `json:"threats"`
	} `json:"event_payload"`
}

func (m Message) payload() payload {
	p := payload{
		Text:        m.Text,
		Parse:       "none",
		Attachments: []attachment{{Color: m.Color, Fallback: m.Text, Blocks: m.Blocks}},
	}
	p.Metadata.EventType = "whalewatch_" + m.Kind
	p.Metadata.Payload.Threats = m.Threats
	return p
}

// Webhook is the JSON body that posts m with an incoming webhook.
func (m Message) Webhook() ([]byte, error) { return json.Marshal(m.payload()) }

// API is the JSON body of chat.postMessage to channel, or of chat.update of
// the message ts when ts is set.
func (m Message) API(channel, ts string) ([]byte, error) {
	p := m.payload()
	p.Channel, p.TS = channel, ts
	return json.Marshal(p)
}
