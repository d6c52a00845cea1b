// Package render turns a threat into what people read: a Slack Block Kit
// message and a one-line console alert. Both are pure functions of the event.
//
// Everything a container controls (container name, image, labels, host, process
// name, command line) is hostile: in Slack output it is escaped for mrkdwn so
// that it cannot mention (<!channel>, <@U123>), link (<https://x|y>) or break
// out of a code block, stripped of control and bidi characters, and cut so
// that every text is within Slack's limits, whatever the input. Rule and
// MITRE fields travel over the same wire and are treated the same way.
package render

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/slack-go/slack"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// Slack's limits, in characters; render keeps to them in bytes, which is
// stricter.
const (
	MaxHeader  = 150  // header block text
	MaxSection = 3000 // section text and any text object
	MaxField   = 2000 // one section field
	MaxFields  = 10   // fields of a section
	MaxBlocks  = 50   // blocks of a message
	MaxText    = 3000 // fallback text (Slack truncates at 40000; notifications show far less)
	MaxLine    = 4096 // console line
)

// Budgets of single values inside a field or line.
const (
	maxValue   = 512
	maxLabels  = 1024
	maxCmdLine = 2048
)

// Message is a Slack message: Block Kit blocks and the fallback text Slack
// shows in notifications and where blocks cannot be rendered.
type Message struct {
	Text   string
	Blocks []slack.Block
}

// severityEmoji is the emoji shortcode in front of a severity.
func severityEmoji(s event.Severity) string {
	switch s {
	case event.SeverityCritical:
		return ":rotating_light:"
	case event.SeverityHigh:
		return ":red_circle:"
	case event.SeverityMedium:
		return ":large_orange_circle:"
	case event.SeverityLow:
		return ":large_yellow_circle:"
	}
	return ":white_circle:"
}

// Slack renders threat e as a Block Kit message:
//
//	header   ":red_circle: HIGH Netcat executed in a container"
//	section  fields: Container (name and short id), Image, Host, Rule,
//	         Technique (linked to MITRE ATT&CK), Tactic, Process, Labels
//	section  the command line in a code block
//	section  the rule's description
//	context  when it happened, the event id
func Slack(e *event.Event) Message {
	rule := e.Rule
	if rule == nil {
		rule = &event.Rule{}
	}
	name := rule.Name
	if name == "" {
		name = rule.ID
	}
	sev := strings.ToUpper(string(e.Whalewatch.Severity))

	blocks := make([]slack.Block, 0, 5)
	blocks = append(blocks, slack.NewHeaderBlock(
		slack.NewTextBlockObject(slack.PlainTextType, value(severityEmoji(e.Whalewatch.Severity)+" "+sev+" "+name, MaxHeader), true, false)))
	blocks = append(blocks, slack.NewSectionBlock(nil, fields(e), nil))
	if p := e.Process; p != nil {
		cmd := p.CommandLine
		if cmd == "" {
			cmd = strings.Join(p.Args, " ")
		}
		if cmd == "" {
			cmd = p.Executable
		}
		const open, close = "*Command line*\n```", "```"
		if code := escape(cmd, MaxSection-len(open)-len(close), true); strings.TrimSpace(code) != "" {
			blocks = append(blocks, slack.NewSectionBlock(mrkdwn(open+code+close), nil, nil))
		}
	}
	if d := escape(rule.Description, MaxSection, false); strings.TrimSpace(d) != "" {
		blocks = append(blocks, slack.NewSectionBlock(mrkdwn(d), nil, nil))
	}
	blocks = append(blocks, slack.NewContextBlock("",
		mrkdwn(when(e.Timestamp)),
		mrkdwn("event "+value(e.Event.ID, maxValue)),
	))
	return Message{Text: fallback(e, sev, name), Blocks: blocks}
}

// mrkdwn is a mrkdwn text object with verbatim set, so that Slack does not
// turn URLs or #channel names in the text into links.
func mrkdwn(text string) *slack.TextBlockObject {
	return slack.NewTextBlockObject(slack.MarkdownType, text, false, true)
}

func fields(e *event.Event) []*slack.TextBlockObject {
	var out []*slack.TextBlockObject
	add := func(title, text string) {
		out = append(out, mrkdwn("*"+title+"*\n"+text))
	}
	c := e.Container
	if c == nil {
		c = &event.Container{}
	}
	container := value(c.Name, maxValue)
	if id := shortID(c.ID); id != "" {
		container += " (" + escape(id, 64, false) + ")"
	}
	add("Container", container)
	image := c.Image.Name
	if len(c.Image.Tag) > 0 && !strings.Contains(image, ":") {
		image += ":" + c.Image.Tag[0]
	}
	add("Image", value(image, maxValue))
	add("Host", value(e.Host.Name, maxValue))
	if e.Rule != nil {
		add("Rule", value(e.Rule.ID, maxValue))
	}
	if t := e.Threat; t != nil {
		add("Technique", technique(t.Technique))
		add("Tactic", value(pair(t.Tactic.ID, t.Tactic.Name), maxValue))
	}
	if p := e.Process; p != nil {
		add("Process", process(p))
	}
	if len(c.Labels) > 0 {
		add("Labels", labels(c.Labels))
	}
	return out[:min(len(out), MaxFields)]
}

// shortID is the first 12 characters of a container id, as docker ps shows.
func shortID(id string) string {
	n := 0
	for i := range id {
		if n == 12 {
			return id[:i]
		}
		n++
	}
	return id
}

// pair joins the first id and name of an ATT&CK field: "TA0011 Command and Control".
func pair(ids, names []string) string {
	var parts []string
	if len(ids) > 0 {
		parts = append(parts, ids[0])
	}
	if len(names) > 0 {
		parts = append(parts, names[0])
	}
	return strings.Join(parts, " ")
}

// technique renders "T1095 Non-Application Layer Protocol", linked to its
// page at attack.mitre.org when the id is a well-formed technique id.
func technique(t event.Technique) string {
	text := value(pair(t.ID, t.Name), maxValue)
	if len(t.ID) == 0 {
		return text
	}
	path, ok := techniquePath(t.ID[0])
	if !ok {
		return text
	}
	return "<https://attack.mitre.org/techniques/" + path + "/|" + text + ">"
}

// techniquePath maps "T1095" to "T1095" and "T1059.001" to "T1059/001", and
// refuses anything else, so that only a fixed URL shape is ever linked.
func techniquePath(id string) (string, bool) {
	digits := func(s string) bool {
		for _, r := range s {
			if r < '0' || r > '9' {
				return false
			}
		}
		return true
	}
	base, sub, hasSub := strings.Cut(id, ".")
	if len(base) != 5 || base[0] != 'T' || !digits(base[1:]) {
		return "", false
	}
	if !hasSub {
		return base, true
	}
	if len(sub) != 3 || !digits(sub) {
		return "", false
	}
	return base + "/" + sub, true
}

func process(p *event.Process) string {
	name := p.Name
	if name == "" {
		name = p.Executable
	}
	var extra []string
	if p.PID != 0 {
		extra = append(extra, "pid "+strconv.Itoa(p.PID))
	}
	if p.User != nil && (p.User.Name != "" || p.User.ID != "") {
		u := p.User.Name
		if u == "" {
			u = p.User.ID
		}
		extra = append(extra, "user "+u)
	}
	s := name
	if len(extra) > 0 {
		s += " (" + strings.Join(extra, ", ") + ")"
	}
	return value(s, maxValue)
}

func labels(m map[string]string) string {
	var b strings.Builder
	for i, k := range slices.Sorted(maps.Keys(m)) {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(m[k])
		if b.Len() > maxLabels {
			break
		}
	}
	return value(b.String(), maxLabels)
}

// when renders t as Slack's date token, which each reader sees in their own
// time zone, with the UTC time as the fallback.
func when(t time.Time) string {
	utc := t.UTC().Format(time.RFC3339)
	if t.Unix() <= 0 {
		return escape(utc, 64, false)
	}
	return fmt.Sprintf("<!date^%d^{date_short_pretty} {time_secs}|%s>", t.Unix(), utc)
}

// fallback is the message's text: one escaped line that says it all.
func fallback(e *event.Event, sev, name string) string {
	var b strings.Builder
	b.WriteString(severityEmoji(e.Whalewatch.Severity) + " " + sev + " " + name)
	if c := e.Container; c != nil {
		b.WriteString(" in container " + event.Truncate(c.Name, maxValue))
		if c.Image.Name != "" {
			b.WriteString(" (image " + event.Truncate(c.Image.Name, maxValue) + ")")
		}
	}
	b.WriteString(" on host " + event.Truncate(e.Host.Name, maxValue))
	if p := e.Process; p != nil && p.CommandLine != "" {
		b.WriteString(": " + event.Truncate(p.CommandLine, MaxText))
	}
	return value(b.String(), MaxText)
}

// Line renders threat e as one console line:
//
//	ALERT high suspicious-tool-netcat host=h container=c image=i: nc -l -p 4444
//
// Control characters are shown as Go escapes and a value with a space, '=' or
// '"' is quoted, so no input can end the line early or pose as another field.
func Line(e *event.Event) string {
	ruleID := ""
	if e.Rule != nil {
		ruleID = e.Rule.ID
	}
	var b strings.Builder
	b.WriteString("ALERT ")
	b.WriteString(token(string(e.Whalewatch.Severity), 16))
	b.WriteByte(' ')
	b.WriteString(token(ruleID, maxValue))
	b.WriteString(" host=" + token(e.Host.Name, maxValue))
	if c := e.Container; c != nil {
		b.WriteString(" container=" + token(c.Name, maxValue))
		b.WriteString(" image=" + token(c.Image.Name, maxValue))
	}
	if p := e.Process; p != nil && p.CommandLine != "" {
		b.WriteString(": " + plain(p.CommandLine, maxCmdLine))
	}
	return plain(b.String(), MaxLine) // idempotent on escaped text; only bounds it
}
