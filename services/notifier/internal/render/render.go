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

// Message is a Slack message: Block Kit blocks inside an attachment whose
// colour bar shows the severity, and the fallback text Slack shows in
// notifications and where blocks cannot be rendered.
type Message struct {
	Text   string
	Color  string
	Blocks []slack.Block
	// Kind and Threats go into the message's metadata: what the message is
	// (alert, group, digest) and how many threats it accounts for.
	Kind    string
	Threats int
}

// Kinds of messages.
const (
	KindAlert  = "alert"  // one threat (and, once updated, its repeats)
	KindGroup  = "group"  // the repeats of a threat posted earlier
	KindDigest = "digest" // threats over the post budget, or too old
)

// Options are what rendering needs beyond the event.
type Options struct {
	// KibanaURL is Kibana's base URL; when set, messages link to the threats
	// in Discover.
	KibanaURL string
	// Count is how many threats of this rule on this container the message
	// stands for (0 or 1: just this one), and Since when the first was seen.
	Count int
	Since time.Time
}

// severityEmoji is the emoji in front of a severity. It is a character, not
// a :shortcode:, so that headers need no emoji parsing, which would also turn
// an attacker's :codes: into emoji.
func severityEmoji(s event.Severity) string {
	switch s {
	case event.SeverityCritical:
		return "🚨"
	case event.SeverityHigh:
		return "🔴"
	case event.SeverityMedium:
		return "🟠"
	case event.SeverityLow:
		return "🟡"
	}
	return "⚪"
}

// Color is the attachment colour of a severity.
func Color(s event.Severity) string {
	switch s {
	case event.SeverityCritical:
		return "#8B0000"
	case event.SeverityHigh:
		return "#E01E1E"
	case event.SeverityMedium:
		return "#F2952F"
	case event.SeverityLow:
		return "#F2C744"
	}
	return "#9E9E9E"
}

// Slack renders threat e as a Block Kit message:
//
//	header   ":red_circle: HIGH Netcat executed in a container"
//	section  fields: Container (name and short id), Image, Host, Rule,
//	         Technique (linked to MITRE ATT&CK), Tactic, Process (and the
//	         executable's short sha256), Incident (id, count, rules), Labels
//	section  the command line in a code block
//	section  the process tree (whalewatch.ancestry), when the threat has one
//	section  recent activity (whalewatch.evidence): log lines, file changes,
//	         connections, the last few of each
//	section  the rule's description
//	context  when it happened, the event id
func Slack(e *event.Event, o Options) Message {
	rule := e.Rule
	if rule == nil {
		rule = &event.Rule{}
	}
	name := rule.Name
	if name == "" {
		name = rule.ID
	}
	sev := strings.ToUpper(string(e.Whalewatch.Severity))

	title := severityEmoji(e.Whalewatch.Severity) + " " + sev + " " + name
	if o.Count > 1 {
		title = severityEmoji(e.Whalewatch.Severity) + " " + sev + " ×" + strconv.Itoa(o.Count) + " " + name
	}
	blocks := make([]slack.Block, 0, 8)
	blocks = append(blocks, slack.NewHeaderBlock(
		slack.NewTextBlockObject(slack.PlainTextType, value(title, MaxHeader), false, false)))
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
	if tree := processTree(e.Whalewatch.Ancestry); tree != "" {
		blocks = append(blocks, slack.NewSectionBlock(mrkdwn(tree), nil, nil))
	}
	if act := activity(e.Whalewatch.Evidence); act != "" {
		blocks = append(blocks, slack.NewSectionBlock(mrkdwn(act), nil, nil))
	}
	if d := escape(rule.Description, MaxSection, false); strings.TrimSpace(d) != "" {
		blocks = append(blocks, slack.NewSectionBlock(mrkdwn(d), nil, nil))
	}
	if r := e.Whalewatch.Response; r != nil {
		blocks = append(blocks, slack.NewSectionBlock(mrkdwn("*Response*\n"+response(r)), nil, nil))
	}
	ctx := []slack.MixedElement{mrkdwn(when(e.Timestamp)), mrkdwn("event " + value(e.Event.ID, maxValue))}
	if o.Count > 1 {
		ctx = append(ctx, mrkdwn(strconv.Itoa(o.Count)+" times on this container since "+when(o.Since)))
	}
	if link := kibanaEvent(o.KibanaURL, e.Event.ID); link != "" {
		ctx = append(ctx, mrkdwn("<"+link+"|Open in Kibana>"))
	}
	blocks = append(blocks, slack.NewContextBlock("", ctx...))
	text := fallback(e, sev, name)
	if o.Count > 1 {
		text = sentence(MaxText, "×"+strconv.Itoa(o.Count)+" ", text)
	}
	return Message{Text: text, Color: Color(e.Whalewatch.Severity), Blocks: blocks, Kind: KindAlert, Threats: max(o.Count, 1)}
}

// response says what the detector did or proposes about the threat.
func response(r *event.Response) string {
	s := value(r.Action, 64)
	switch {
	case r.DryRun:
		s += " (proposed, dry run)"
	case r.Status != "":
		s += " (" + value(r.Status, 64) + ")"
	default:
		s += " (requested)"
	}
	if r.Reason != "" {
		s += ": " + value(r.Reason, maxValue)
	}
	return s
}

// kibanaEvent links to the event in Kibana's Discover, when base is set and
// the id is one render can put in a URL unescaped (event ids are hex).
func kibanaEvent(base, id string) string {
	if base == "" || !plainID(id) {
		return ""
	}
	return strings.TrimSuffix(base, "/") + "/app/discover#/?_a=(query:(language:kuery,query:'event.id:" + id + "'))"
}

// kibanaRange links to the threats between from and to in Discover.
func kibanaRange(base string, from, to time.Time) string {
	if base == "" {
		return ""
	}
	return strings.TrimSuffix(base, "/") + "/app/discover#/?_g=(time:(from:'" + from.UTC().Format(time.RFC3339) +
		"',to:'" + to.UTC().Add(time.Second).Format(time.RFC3339) + "'))&_a=(query:(language:kuery,query:'event.kind:alert'))"
}

func plainID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '_') {
			return false
		}
	}
	return true
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
	if in := e.Whalewatch.Incident; in != nil {
		add("Incident", incident(in))
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
	s = value(s, maxValue)
	if p.Hash != nil {
		if h := sha256Short(p.Hash.SHA256); h != "" {
			s += "\nsha256 `" + h + "…`"
		}
	}
	return s
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
	parts := []string{severityEmoji(e.Whalewatch.Severity) + " ", piece(sev, 64), " ", piece(name, maxValue)}
	if c := e.Container; c != nil {
		parts = append(parts, " in container ", piece(c.Name, maxValue))
		if c.Image.Name != "" {
			parts = append(parts, " (image ", piece(c.Image.Name, maxValue), ")")
		}
	}
	parts = append(parts, " on host ", piece(e.Host.Name, maxValue))
	if p := e.Process; p != nil && p.CommandLine != "" {
		parts = append(parts, ": ", piece(p.CommandLine, MaxText))
	}
	return sentence(MaxText, parts...)
}

// Group renders the repeats of threat e (the first of its group, posted
// already) within window: "+41 more: HIGH suspicious-tool-netcat on
// container web (nginx:1.27) on host h in the last 1m0s".
func Group(e *event.Event, more int, window time.Duration, o Options) Message {
	rule := ""
	if e.Rule != nil {
		rule = e.Rule.ID
	}
	parts := []string{"+" + strconv.Itoa(more) + " more: ", piece(strings.ToUpper(string(e.Whalewatch.Severity)), 64), " ", piece(rule, maxValue)}
	if c := e.Container; c != nil {
		parts = append(parts, " on container ", piece(c.Name, maxValue), " (", piece(c.Image.Name, maxValue), ")")
	}
	parts = append(parts, " on host ", piece(e.Host.Name, maxValue), " in the last "+window.String())
	text := sentence(MaxSection-200, parts...)
	ctx := []slack.MixedElement{mrkdwn("first: event " + value(e.Event.ID, maxValue))}
	if link := kibanaRange(o.KibanaURL, o.Since, time.Now()); link != "" {
		ctx = append(ctx, mrkdwn("<"+link+"|Open in Kibana>"))
	}
	return Message{
		Text:    text,
		Color:   Color(e.Whalewatch.Severity),
		Blocks:  []slack.Block{slack.NewSectionBlock(mrkdwn(text), nil, nil), slack.NewContextBlock("", ctx...)},
		Kind:    KindGroup,
		Threats: more,
	}
}

// Tally is one name and how many threats had it.
type Tally struct {
	Name  string
	Count int
}

// DigestStats describes the threats a digest stands for.
type DigestStats struct {
	Count      int
	BySeverity map[event.Severity]int
	Containers int
	Rules      []Tally // most frequent first
	Images     []Tally
	// Stale counts the threats among Count that were older than the notifier's
	// maximum age when read, so were not posted one by one.
	Stale    int
	From, To time.Time
}

// Digest renders threats that were not posted one by one: "312 more: 290
// low, 22 medium on 40 containers; top rules: …; top images: …".
func Digest(d DigestStats, o Options) Message {
	var b []string
	b = append(b, strconv.Itoa(d.Count)+" more:")
	first := true
	worst := event.SeverityLow
	for i := len(event.Severities) - 1; i >= 0; i-- {
		s := event.Severities[i]
		if n := d.BySeverity[s]; n > 0 {
			sep := ", "
			if first {
				worst, sep = s, " "
			}
			first = false
			b = append(b, sep+strconv.Itoa(n)+" "+string(s))
		}
	}
	b = append(b, " on "+strconv.Itoa(d.Containers)+" containers")
	if d.Stale > 0 {
		b = append(b, " ("+strconv.Itoa(d.Stale)+" older than the notifier's maximum age)")
	}
	tops := func(title string, ts []Tally) {
		if len(ts) == 0 {
			return
		}
		b = append(b, "; top "+title+": ")
		for i, t := range ts[:min(len(ts), 5)] {
			if i > 0 {
				b = append(b, ", ")
			}
			b = append(b, piece(t.Name, 128), " ("+strconv.Itoa(t.Count)+")")
		}
	}
	tops("rules", d.Rules)
	tops("images", d.Images)
	text := sentence(MaxSection-200, b...)
	ctx := []slack.MixedElement{mrkdwn("from " + when(d.From) + " to " + when(d.To))}
	if link := kibanaRange(o.KibanaURL, d.From, d.To); link != "" {
		ctx = append(ctx, mrkdwn("<"+link+"|Open them in Kibana>"))
	}
	return Message{
		Text:    text,
		Color:   Color(worst),
		Blocks:  []slack.Block{slack.NewSectionBlock(mrkdwn(text), nil, nil), slack.NewContextBlock("", ctx...)},
		Kind:    KindDigest,
		Threats: d.Count,
	}
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
