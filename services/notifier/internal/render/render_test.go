package render

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/slack-go/slack"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/testkit/slackstub"
)

// threat is a netcat threat as the detector publishes it.
func threat() *event.Event {
	return &event.Event{
		Timestamp: time.Date(2025, 3, 1, 12, 30, 5, 0, time.UTC),
		Message:   "netcat ran",
		Event: event.Meta{
			ID: "4f1c2a9b7d3e4f5a6b7c8d9e0f1a2b3c", Kind: event.KindAlert,
			Dataset: event.DatasetThreat, Module: event.Module, Severity: 73,
		},
		Host: event.Host{Name: "docker-host-1"},
		Container: &event.Container{
			ID:     "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
			Name:   "web",
			Image:  event.Image{Name: "nginx:1.27"},
			Labels: map[string]string{"com.docker.compose.project": "shop"},
		},
		Process: &event.Process{
			PID: 4242, Name: "nc", Executable: "/usr/bin/nc",
			CommandLine: "nc -l -p 4444", Args: []string{"nc", "-l", "-p", "4444"},
			User: &event.User{ID: "0", Name: "root"},
		},
		Rule: &event.Rule{
			ID: "suspicious-tool-netcat", Name: "Netcat executed in a container",
			Description: "nc, ncat or netcat ran in a container. Attackers use it for bind and reverse shells.",
		},
		Threat: &event.Threat{
			Framework: event.FrameworkMITRE,
			Technique: event.Technique{ID: []string{"T1095"}, Name: []string{"Non-Application Layer Protocol"}},
			Tactic:    event.Tactic{ID: []string{"TA0011"}, Name: []string{"Command and Control"}},
		},
		Whalewatch: event.Whalewatch{SchemaVersion: event.SchemaVersion, Severity: event.SeverityHigh},
	}
}

// texts returns every text object of m, with the limit Slack puts on it.
func texts(m Message) (out []struct {
	where string
	text  string
	max   int
}) {
	add := func(where, text string, max int) {
		out = append(out, struct {
			where string
			text  string
			max   int
		}{where, text, max})
	}
	add("fallback", m.Text, MaxText)
	for _, b := range m.Blocks {
		switch b := b.(type) {
		case *slack.HeaderBlock:
			add("header", b.Text.Text, MaxHeader)
		case *slack.SectionBlock:
			if b.Text != nil {
				add("section", b.Text.Text, MaxSection)
			}
			for _, f := range b.Fields {
				add("field", f.Text, MaxField)
			}
		case *slack.ContextBlock:
			for _, e := range b.ContextElements.Elements {
				add("context", e.(*slack.TextBlockObject).Text, MaxSection)
			}
		}
	}
	return out
}

// checkNeutral fails when text holds two markers of one kind (* _ ~ :) that
// are not neutralised by a zero-width space in front.
func checkNeutral(t testing.TB, where, text string, marks ...string) {
	t.Helper()
	if len(marks) == 0 {
		marks = []string{"*", "_", "~", ":"}
	}
	for _, c := range marks {
		bare := strings.Count(text, c) - strings.Count(text, "\u200b"+c)
		if bare > 1 {
			t.Fatalf("%s text has %d bare %q: %q", where, bare, c, text)
		}
	}
}

// checkMessage asserts what must hold for every rendered message.
func checkMessage(t testing.TB, m Message) {
	t.Helper()
	if len(m.Blocks) == 0 || len(m.Blocks) > MaxBlocks {
		t.Fatalf("%d blocks", len(m.Blocks))
	}
	for _, tx := range texts(m) {
		if tx.text == "" || len(tx.text) > tx.max {
			t.Fatalf("%s text of %d bytes, limit %d: %q", tx.where, len(tx.text), tx.max, tx.text)
		}
		if !utf8.ValidString(tx.text) {
			t.Fatalf("%s text is not valid UTF-8: %q", tx.where, tx.text)
		}
		for i, r := range tx.text {
			if r < ' ' && r != '\n' || r == 0x7f || r >= 0x80 && r < 0xa0 || r >= 0x202a && r <= 0x202e || r >= 0x2066 && r <= 0x2069 {
				t.Fatalf("%s text has control character %U at %d: %q", tx.where, r, i, tx.text)
			}
		}
		// The only '<' are the ones render writes itself.
		for rest := tx.text; ; {
			i := strings.IndexByte(rest, '<')
			if i < 0 {
				break
			}
			rest = rest[i:]
			if !strings.HasPrefix(rest, "<!date^") && !strings.HasPrefix(rest, "<https://attack.mitre.org/techniques/") &&
				!strings.HasPrefix(rest, "<https://kibana.example.com/") {
				t.Fatalf("%s text has a '<' that is not render's own: %q", tx.where, tx.text)
			}
			rest = rest[1:]
		}
		if tx.where == "section" && strings.HasPrefix(tx.text, "*Command line*") {
			if n := strings.Count(tx.text, "```"); n != 2 {
				t.Fatalf("command line block has %d fences: %q", n, tx.text)
			}
		}
		if tx.where == "section" && (strings.HasPrefix(tx.text, "*Process tree*") || strings.HasPrefix(tx.text, "*Recent activity*")) {
			checkFences(t, tx.text)
		}
	}
	for _, b := range m.Blocks {
		if s, ok := b.(*slack.SectionBlock); ok && len(s.Fields) > MaxFields {
			t.Fatalf("%d fields", len(s.Fields))
		}
	}
	// No formatting from the input: in what render does not write itself
	// (field values, the fallback) a marker that could pair is neutralised.
	checkNeutral(t, "fallback", m.Text, "*", "_", "~") // render's own ": " joins values
	for _, tx := range texts(m) {
		if tx.where == "field" {
			_, v, _ := strings.Cut(tx.text, "\n")
			if !strings.HasPrefix(v, "<https://attack.mitre.org/") {
				checkNeutral(t, "field", v)
			}
		}
		if strings.ContainsAny(tx.text, "\u2028\u2029") {
			t.Fatalf("%s text has a line or paragraph separator: %q", tx.where, tx.text)
		}
		if i := strings.Index(strings.ToLower(tx.text), "@channel"); i >= 0 {
			t.Fatalf("%s text has a bare @channel: %q", tx.where, tx.text)
		}
	}
	raw, err := m.Webhook()
	if err != nil {
		t.Fatal(err)
	}
	var p struct {
		Parse       string `json:"parse"`
		Attachments []struct {
			Color  string          `json:"color"`
			Blocks json.RawMessage `json:"blocks"`
		} `json:"attachments"`
	}
	if err := json.Unmarshal(raw, &p); err != nil || p.Parse != "none" || len(p.Attachments) != 1 || p.Attachments[0].Color == "" {
		t.Fatalf("payload: %v %s", err, raw)
	}
	// Slack's own rules, as the stub checks them.
	raw, err = json.Marshal(m.Blocks)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := slackstub.ParseBlocks(raw); err != nil {
		t.Fatalf("Slack would reject the blocks: %v\n%s", err, raw)
	}
}

// checkFences fails unless every ``` in text is render's own: an opening
// fence at the start of a line, then its closing fence at the end of one,
// so no attacker text opened, closed or split a code block.
func checkFences(t testing.TB, text string) {
	t.Helper()
	n := 0
	for rest, at := text, 0; ; n++ {
		i := strings.Index(rest, "```")
		if i < 0 {
			break
		}
		at += i
		open := n%2 == 0
		if open && (at == 0 || text[at-1] != '\n') || !open && at+3 < len(text) && text[at+3] != '\n' {
			t.Fatalf("fence %d at %d is not render's own: %q", n, at, text)
		}
		rest, at = text[at+3:], at+3
	}
	if n == 0 || n%2 != 0 {
		t.Fatalf("%d fences: %q", n, text)
	}
}

// withEvidence is threat() with the evidence, ancestry, hash and incident the
// detector adds (issue 11).
func withEvidence() *event.Event {
	e := threat()
	e.Process.Hash = &event.Hash{SHA256: "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08"}
	e.Whalewatch.Ancestry = []event.Ancestor{
		{PID: 4200, Name: "sh", Executable: "/bin/sh", CommandLine: "sh -c nc -l -p 4444"},
		{PID: 4100, Name: "runc:[2:INIT]"},
		{PID: 1, Executable: "/usr/bin/containerd-shim-runc-v2"},
	}
	e.Whalewatch.Evidence = &event.Evidence{
		LogLines:    []string{"l1", "l2", "l3", "l4", "l5", "GET /healthz 200", "listening on 0.0.0.0:4444"},
		FileChanges: []string{"write /tmp/x"},
		Connections: []string{"listen 0.0.0.0:4444 tcp"},
		Processes:   []string{"4242 nc -l -p 4444"},
	}
	e.Whalewatch.Incident = &event.Incident{
		ID: "b7e1c0ffee5a5a5a5a5a", Count: 3, First: e.Timestamp,
		Rules: []string{"suspicious-tool-netcat", "netcat-shell"},
	}
	return e
}

func TestSlackEvidence(t *testing.T) {
	t.Parallel()
	m := Slack(withEvidence(), Options{})
	checkMessage(t, m)
	require.Len(t, m.Blocks, 7)
	fields := m.Blocks[1].(*slack.SectionBlock).Fields
	require.Equal(t, "*Process*\nnc (pid 4242, user root)\nsha256 `9f86d081884c…`", fields[6].Text)
	require.Equal(t, "*Incident*\nb7e1c0ffee5a · 3 threats\nrules suspicious-tool-netcat, netcat-shell", fields[7].Text)
	require.Equal(t, "*Process tree* (parent first)\n```4200 sh -c nc -l -p 4444\n4100 runc:[2:INIT]\n1 /usr/bin/containerd-shim-runc-v2```",
		m.Blocks[3].(*slack.SectionBlock).Text.Text)
	require.Equal(t, "*Recent activity*\nLog lines (last 5 of 7)\n```l3\nl4\nl5\nGET /healthz 200\nlistening on 0.0.0.0:4444```"+
		"\nFile changes\n```write /tmp/x```\nConnections\n```listen 0.0.0.0:4444 tcp```",
		m.Blocks[4].(*slack.SectionBlock).Text.Text)

	t.Run("sparse", func(t *testing.T) {
		t.Parallel()
		for name, mutate := range map[string]func(e *event.Event){
			"not a digest":        func(e *event.Event) { e.Process.Hash.SHA256 = "`<!here>`" + strings.Repeat("0", 55) },
			"empty evidence":      func(e *event.Event) { e.Whalewatch.Evidence = &event.Evidence{LogLines: []string{"", "\x00\u2028"}} },
			"empty ancestors":     func(e *event.Event) { e.Whalewatch.Ancestry = []event.Ancestor{{}, {CommandLine: "\u202e"}} },
			"empty incident":      func(e *event.Event) { e.Whalewatch.Incident = &event.Incident{} },
			"many ancestors":      func(e *event.Event) { e.Whalewatch.Ancestry = make([]event.Ancestor, event.MaxAncestry) },
			"many rules":          func(e *event.Event) { e.Whalewatch.Incident.Rules = strings.Fields(strings.Repeat("r ", 40)) },
			"hostile incident id": func(e *event.Event) { e.Whalewatch.Incident.ID = "*<!channel>*" },
		} {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				e := withEvidence()
				mutate(e)
				m := Slack(e, Options{})
				checkMessage(t, m)
				raw, err := json.Marshal(m.Blocks)
				require.NoError(t, err)
				require.NotContains(t, string(raw), "<!here>")
				require.NotContains(t, string(raw), "<!channel>")
			})
		}
	})
}

// TestSlackEvidenceHostile fills every evidence list to the wire contract's
// bounds with the worst text there is: the message stays within Slack's
// limits and no item opens, closes or leaves a code block.
func TestSlackEvidenceHostile(t *testing.T) {
	t.Parallel()
	hostile := "```<!channel>``` `\u2028<@U123>\u2029 *b* _i_ ~s~ :x: \x1b[31m\u202e <https://evil|x>` " + strings.Repeat("`", 7)
	long := hostile + strings.Repeat("A", 4<<10) + "```"
	list := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = long
		}
		return out
	}
	e := withEvidence()
	e.Process.CommandLine = long
	e.Whalewatch.Ancestry = make([]event.Ancestor, event.MaxAncestry)
	for i := range e.Whalewatch.Ancestry {
		e.Whalewatch.Ancestry[i] = event.Ancestor{PID: i + 1, Name: long, Executable: long, CommandLine: long}
	}
	e.Whalewatch.Evidence = &event.Evidence{
		LogLines: list(event.MaxEvidence), FileChanges: list(event.MaxEvidence),
		Connections: list(event.MaxEvidence), Processes: list(event.MaxEvidence),
	}
	e.Whalewatch.Incident = &event.Incident{ID: long, Count: 1 << 30, Rules: list(event.MaxEvidence)}
	e.Container.Labels = map[string]string{long: long}

	m := Slack(e, Options{KibanaURL: "https://kibana.example.com", Count: 99, Since: e.Timestamp})
	checkMessage(t, m)
	require.LessOrEqual(t, len(m.Blocks), MaxBlocks)
	raw, err := m.Webhook()
	require.NoError(t, err)
	for _, bad := range []string{"<!channel>", "<@U123>", "<https://evil", "\\u001b", "\\u202e", "\\u2028", "\\u2029"} {
		require.NotContains(t, string(raw), bad)
	}
	for _, b := range m.Blocks[3:5] {
		text := b.(*slack.SectionBlock).Text.Text
		require.LessOrEqual(t, len(text), MaxSection)
		require.NotContains(t, text, "\u2028")
	}
	// Every text object is within its limit (checkMessage); the whole message
	// is bounded too, far below what Slack accepts in one post.
	require.Less(t, len(raw), 40000, "payload of %d bytes", len(raw))
	t.Logf("maximal hostile threat: %d blocks, %d bytes of payload", len(m.Blocks), len(raw))
}

func TestSlack(t *testing.T) {
	t.Parallel()
	m := Slack(threat(), Options{})
	checkMessage(t, m)
	require.Len(t, m.Blocks, 5)

	header := m.Blocks[0].(*slack.HeaderBlock)
	require.Equal(t, slack.PlainTextType, header.Text.Type)
	require.Equal(t, "🔴 HIGH Netcat executed in a container", header.Text.Text)

	var fields []string
	for _, f := range m.Blocks[1].(*slack.SectionBlock).Fields {
		require.Equal(t, slack.MarkdownType, f.Type)
		require.True(t, f.Verbatim, "verbatim keeps Slack from linking URLs and channels in hostile text")
		fields = append(fields, f.Text)
	}
	require.Equal(t, []string{
		"*Container*\nweb (0123456789ab)",
		"*Image*\nnginx:1.27",
		"*Host*\ndocker-host-1",
		"*Rule*\nsuspicious-tool-netcat",
		"*Technique*\n<https://attack.mitre.org/techniques/T1095/|T1095 Non-Application Layer Protocol>",
		"*Tactic*\nTA0011 Command and Control",
		"*Process*\nnc (pid 4242, user root)",
		"*Labels*\ncom.docker.compose.project=shop",
	}, fields)

	require.Equal(t, "*Command line*\n```nc -l -p 4444```", m.Blocks[2].(*slack.SectionBlock).Text.Text)
	require.Equal(t, threat().Rule.Description, m.Blocks[3].(*slack.SectionBlock).Text.Text)
	ctx := m.Blocks[4].(*slack.ContextBlock).ContextElements.Elements
	require.Equal(t, "<!date^1740832205^{date_short_pretty} {time_secs}|2025-03-01T12:30:05Z>", ctx[0].(*slack.TextBlockObject).Text)
	require.Equal(t, "event 4f1c2a9b7d3e4f5a6b7c8d9e0f1a2b3c", ctx[1].(*slack.TextBlockObject).Text)

	require.Equal(t, "🔴 HIGH Netcat executed in a container in container web (image nginx:1.27) on host docker-host-1: nc -l -p 4444", m.Text)
}

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// TestGolden pins the webhook payloads of the netcat threat, bare and with
// its evidence. The files are also samples to post by hand (see the README):
//
//	curl -H 'Content-Type: application/json' --data @testdata/netcat.golden.json "$SLACK_WEBHOOK_URL"
//
// Regenerate with go test ./internal/render -run TestGolden -update.
func TestGolden(t *testing.T) {
	t.Parallel()
	for path, e := range map[string]*event.Event{
		"testdata/netcat.golden.json":   threat(),
		"testdata/evidence.golden.json": withEvidence(), // process tree, hash, recent activity, incident
	} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			e.Whalewatch.Response = &event.Response{Action: "pause", DryRun: true, Reason: "policy pause-netcat"}
			m := Slack(e, Options{KibanaURL: "https://kibana.example.com"})
			body, err := m.Webhook()
			require.NoError(t, err)
			var buf bytes.Buffer
			require.NoError(t, json.Indent(&buf, body, "", "  "))
			got := append(buf.Bytes(), '\n')
			if *update {
				require.NoError(t, os.MkdirAll("testdata", 0o755))
				require.NoError(t, os.WriteFile(path, got, 0o644))
			}
			want, err := os.ReadFile(path)
			require.NoError(t, err)
			require.Equal(t, string(want), string(got), "run go test ./internal/render -run TestGolden -update")
		})
	}
}

func TestSlackSparseThreat(t *testing.T) {
	t.Parallel()
	tests := map[string]func(e *event.Event){
		"no container": func(e *event.Event) { e.Container = nil },
		"no process":   func(e *event.Event) { e.Process = nil },
		"no threat":    func(e *event.Event) { e.Threat = nil },
		"no rule":      func(e *event.Event) { e.Rule = nil },
		"empty strings": func(e *event.Event) {
			e.Container.Name, e.Container.ID, e.Host.Name, e.Rule.Description = "", "", "", ""
		},
		"args only":           func(e *event.Event) { e.Process.CommandLine = "" },
		"control only":        func(e *event.Event) { e.Process.CommandLine = "\x1b\x00\u202e" },
		"unknown severity":    func(e *event.Event) { e.Whalewatch.Severity = "<!here>" },
		"bad technique id":    func(e *event.Event) { e.Threat.Technique.ID = []string{"T1095|<https://evil>"} },
		"sub-technique":       func(e *event.Event) { e.Threat.Technique.ID = []string{"T1059.004"} },
		"zero time":           func(e *event.Event) { e.Timestamp = time.Time{} },
		"empty mitre arrays":  func(e *event.Event) { e.Threat.Technique, e.Threat.Tactic = event.Technique{}, event.Tactic{} },
		"image tag separated": func(e *event.Event) { e.Container.Image = event.Image{Name: "nginx", Tag: []string{"1.27"}} },
	}
	for name, mutate := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := threat()
			mutate(e)
			checkMessage(t, Slack(e, Options{}))
			line := Line(e)
			require.NotContains(t, line, "\n")
			require.True(t, strings.HasPrefix(line, "ALERT "), line)
		})
	}
	t.Run("technique links", func(t *testing.T) {
		e := threat()
		e.Threat.Technique.ID = []string{"T1059.004"}
		require.Contains(t, Slack(e, Options{}).Blocks[1].(*slack.SectionBlock).Fields[4].Text, "<https://attack.mitre.org/techniques/T1059/004/|T1059.004 ")
		e.Threat.Technique.ID = []string{"T1095|<https://evil>"}
		require.Equal(t, "*Technique*\nT1095|&lt;https://evil&gt; Non-Application Layer Protocol", Slack(e, Options{}).Blocks[1].(*slack.SectionBlock).Fields[4].Text)
	})
	t.Run("image tag", func(t *testing.T) {
		e := threat()
		e.Container.Image = event.Image{Name: "nginx", Tag: []string{"1.27"}}
		require.Equal(t, "*Image*\nnginx:1.27", Slack(e, Options{}).Blocks[1].(*slack.SectionBlock).Fields[1].Text)
	})
}

func TestSlackHostile(t *testing.T) {
	t.Parallel()
	hostile := "<!channel> ``` $(rm -rf /) <@U123> <https://evil.example|click> &amp; \x1b[31m\u202eevil\n"
	e := threat()
	e.Process.CommandLine = hostile + strings.Repeat("A", 10<<10)
	e.Container.Name = "<!here>"
	e.Container.Image.Name = "evil/<#C123>"
	e.Container.Labels = map[string]string{"<!subteam^S1>": strings.Repeat("<", 5000)}
	e.Host.Name = "h\n<!everyone>"
	e.Process.Name = "```"
	e.Rule.Name = strings.Repeat("<!channel>", 40)

	m := Slack(e, Options{})
	checkMessage(t, m)
	raw, err := json.Marshal(m)
	require.NoError(t, err)
	for _, bad := range []string{"<!channel>", "<!here>", "<!everyone>", "<@U123>", "<#C123>", "<!subteam", "<https://evil", "\\u001b", "\\u202e"} {
		require.NotContains(t, string(raw), bad)
	}
	cmd := m.Blocks[2].(*slack.SectionBlock).Text.Text
	require.True(t, strings.HasPrefix(cmd, "*Command line*\n```&lt;!channel&gt; `\u200b`\u200b` $(rm -rf /) &lt;@U123&gt; &lt;https://evil.example|click&gt; &amp;amp; [31mevil AAA"), cmd)
	require.True(t, strings.HasSuffix(cmd, "AAA…```"), "a long command line is cut and marked")
	require.LessOrEqual(t, len(cmd), MaxSection)
	require.LessOrEqual(t, len(m.Blocks[0].(*slack.HeaderBlock).Text.Text), MaxHeader)
	require.Contains(t, m.Blocks[1].(*slack.SectionBlock).Fields[0].Text, "&lt;!here&gt;")
}

func TestEscape(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		max  int
		code bool
		want string
	}{
		{"nc -l -p 4444", 100, false, "nc -l -p 4444"},
		{"a & b <c> d", 100, false, "a &amp; b &lt;c&gt; d"},
		{"<!channel>", 100, false, "&lt;!channel&gt;"},
		{"<@U123|x>", 100, false, "&lt;@U123|x&gt;"},
		{"&lt;", 100, false, "&amp;lt;"},
		{"a\tb\nc\rd", 100, false, "a b c d"},
		{"\x00\x1b[1m\x7f\u0085x\u202e\u2066", 100, false, "[1mx"},
		{"bad \xff utf8", 100, false, "bad \uFFFD utf8"},
		{"é€😀", 100, false, "é€😀"},
		{"", 100, false, ""},
		// code: backticks cannot close the block, nor join the fences.
		{"a ``` b", 100, true, "a `\u200b`\u200b` b"},
		{"`x`", 100, true, "\u200b`x`\u200b"},
		{"echo `id`", 100, true, "echo `id`\u200b"},
		{"<b>", 100, true, "&lt;b&gt;"},
		// limits: cut on a boundary, never inside an entity, ellipsis within max.
		{"abcdefghij", 10, false, "abcdefghij"},
		{"abcdefghijk", 10, false, "abcdefg…"},
		{"<<<<<<", 12, false, "&lt;&lt;…"},
		{"ééééé", 9, false, "ééé…"}, {"ééééé", 8, false, "éé…"},
		{"abc", 2, false, ""},
		{"``````", 12, true, "\u200b`\u200b`…"},
	}
	for _, tt := range tests {
		got := escape(tt.in, tt.max, tt.code)
		require.Equal(t, tt.want, got, "escape(%q, %d, %v)", tt.in, tt.max, tt.code)
		require.LessOrEqual(t, len(got), tt.max)
	}
}

func TestLine(t *testing.T) {
	t.Parallel()
	require.Equal(t, "ALERT high suspicious-tool-netcat host=docker-host-1 container=web image=nginx:1.27: nc -l -p 4444", Line(threat()))

	e := threat()
	e.Process.CommandLine = "nc -l\n2025 ALERT critical fake host=x\x1b[2J\u202e"
	e.Container.Name = "web host=forged"
	e.Host.Name = ""
	require.Equal(t, `ALERT high suspicious-tool-netcat host="" container="web host=forged" image=nginx:1.27: nc -l\n2025 ALERT critical fake host=x\x1b[2J\u202e`, Line(e))

	e.Process.CommandLine = strings.Repeat("x", 100<<10)
	require.LessOrEqual(t, len(Line(e)), MaxLine)
	require.True(t, strings.HasSuffix(Line(e), "x…"))
}

func FuzzSlack(f *testing.F) {
	f.Add("web", "nginx:1.27", "host-1", "nc -l -p 4444", "k", "v", "Netcat", "T1095", "high")
	f.Add("<!here>", "evil/<#C1>", "h\n<!everyone>", "<!channel> ``` $(rm -rf /)", "<@U1>", "<https://x|y>", "```", "T1059.001", "critical")
	f.Add("\x1b\x00\u202e", "\xff\xfe", "", "`", "", "", "", "T", "<!channel>")
	f.Add("*bold*", "_it_", "~s~", ":skull: @channel @here", "\u2028", "\u2029", ":fire:", "T1", "low")
	f.Fuzz(func(t *testing.T, name, image, host, cmd, lk, lv, rule, tech, sev string) {
		e := withEvidence()
		e.Process.Hash.SHA256 = lk
		e.Whalewatch.Ancestry = []event.Ancestor{{PID: 1, Name: name, Executable: image, CommandLine: cmd}, {Name: lv}, {Executable: lk}}
		e.Whalewatch.Evidence = &event.Evidence{
			LogLines: []string{cmd, lv, cmd + cmd}, FileChanges: []string{name, host}, Connections: []string{host, lk},
		}
		e.Whalewatch.Incident = &event.Incident{ID: tech, Count: len(cmd), Rules: []string{rule, sev, lv}}
		e.Container.Name, e.Container.Image.Name, e.Host.Name = name, image, host
		e.Container.ID = name + image
		e.Container.Labels = map[string]string{lk: lv, lv: lk}
		e.Process.CommandLine, e.Process.Name = cmd, rule
		e.Rule.Name, e.Rule.ID, e.Rule.Description = rule, tech, cmd+cmd
		e.Threat.Technique.ID = []string{tech}
		e.Threat.Tactic.Name = []string{name}
		e.Whalewatch.Severity = event.Severity(sev)
		e.Event.ID = host
		checkMessage(t, Slack(e, Options{KibanaURL: "https://kibana.example.com", Count: 3, Since: e.Timestamp}))
		checkMessage(t, Group(e, 3, time.Minute, Options{}))
		checkMessage(t, Digest(DigestStats{Count: 2, BySeverity: map[event.Severity]int{e.Whalewatch.Severity: 2}, Containers: 1,
			Rules: []Tally{{rule, 1}, {cmd, 1}}, Images: []Tally{{image, 2}}}, Options{}))

		line := Line(e)
		if len(line) > MaxLine || !utf8.ValidString(line) {
			t.Fatalf("line of %d bytes, valid UTF-8 %v", len(line), utf8.ValidString(line))
		}
		for _, r := range line {
			if r < ' ' || r == 0x7f || r >= 0x80 && r < 0xa0 || r >= 0x202a && r <= 0x202e || r >= 0x2066 && r <= 0x2069 {
				t.Fatalf("line has control character %U: %q", r, line)
			}
		}
	})
}

func TestMrkdwnIsNeutralised(t *testing.T) {
	t.Parallel()
	e := threat()
	e.Container.Name = "*bold* _it_ ~strike~ :skull: @channel @Here"
	e.Container.Image.Name = "evil\u2028image\u2029:tag"
	e.Process.CommandLine = "*not bold in code* :x:"
	e.Rule.Description = "*desc* :fire:"
	m := Slack(e, Options{})
	checkMessage(t, m)
	f := m.Blocks[1].(*slack.SectionBlock).Fields
	require.Equal(t, "*Container*\n\u200b*bold\u200b* \u200b_it\u200b_ \u200b~strike\u200b~ \u200b:skull\u200b: @\u200bchannel @\u200bHere (0123456789ab)", f[0].Text)
	require.Equal(t, "*Image*\nevil image :tag", f[1].Text)
	require.Contains(t, m.Blocks[2].(*slack.SectionBlock).Text.Text, "```*not bold in code* :x:```", "code is literal")
	require.Equal(t, "\u200b*desc\u200b* \u200b:fire\u200b:", m.Blocks[3].(*slack.SectionBlock).Text.Text)
	require.NotContains(t, m.Text, "@channel")
	require.NotContains(t, m.Text, "*bold*")
}

func TestGroupAndDigest(t *testing.T) {
	t.Parallel()
	e := threat()
	e.Container.Name = "*a*"
	g := Group(e, 41, time.Minute, Options{KibanaURL: "https://kibana.example.com"})
	require.Equal(t, KindGroup, g.Kind)
	require.Equal(t, 41, g.Threats)
	require.Equal(t, "+41 more: HIGH suspicious-tool-netcat on container \u200b*a\u200b* (nginx:1.27) on host docker-host-1 in the last 1m0s", g.Text)
	require.Equal(t, Color(event.SeverityHigh), g.Color)
	checkMessage(t, g)

	from := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	d := Digest(DigestStats{
		Count: 312, BySeverity: map[event.Severity]int{event.SeverityLow: 290, event.SeverityMedium: 22}, Containers: 40,
		Rules:  []Tally{{"rule-a", 200}, {"<!channel>", 112}},
		Images: []Tally{{"shop/web:1", 312}},
		From:   from, To: from.Add(time.Minute),
	}, Options{KibanaURL: "https://kibana.example.com"})
	require.Equal(t, 312, d.Threats)
	require.Equal(t, "312 more: 22 medium, 290 low on 40 containers; top rules: rule-a (200), &lt;!channel&gt; (112); top images: shop/web:1 (312)", d.Text)
	require.Equal(t, Color(event.SeverityMedium), d.Color)
	require.Contains(t, d.Blocks[1].(*slack.ContextBlock).ContextElements.Elements[1].(*slack.TextBlockObject).Text, "<https://kibana.example.com/app/discover#/?_g=(time:(from:'2026-01-01T00:00:00Z'")
	checkMessage(t, d)
}

func FuzzEscape(f *testing.F) {
	f.Add("<!channel> ``` &", 20, true)
	f.Add("ééé<<<", 7, false)
	f.Fuzz(func(t *testing.T, s string, max int, code bool) {
		if max < 0 || max > 10000 {
			return
		}
		got := escape(s, max, code)
		if len(got) > max || !utf8.ValidString(got) || strings.ContainsAny(got, "<>") {
			t.Fatalf("escape(%q, %d, %v) = %q", s, max, code, got)
		}
		// every '&' starts an entity render wrote
		for i := range len(got) {
			if got[i] == '&' && !strings.HasPrefix(got[i:], "&amp;") && !strings.HasPrefix(got[i:], "&lt;") && !strings.HasPrefix(got[i:], "&gt;") {
				t.Fatalf("bare '&' in %q", got)
			}
		}
		if code && (strings.Contains(got, "``") || strings.HasPrefix(got, "`") || strings.HasSuffix(got, "`")) {
			t.Fatalf("code text can touch a fence: %q", got)
		}
	})
}

// BenchmarkRender measures rendering one alert against json.Marshal of the
// same event (what every consumer does per event anyway), and the full cost
// of the Slack payload (render + encode the blocks).
func BenchmarkRender(b *testing.B) {
	e := threat()
	b.Run("baseline=json.Marshal(event)", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(e); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Slack", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = Slack(e, Options{})
		}
	})
	b.Run("Slack+json.Marshal(blocks)", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			m := Slack(e, Options{})
			if _, err := json.Marshal(m.Blocks); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Line", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = Line(e)
		}
	})
	hostile := threat()
	hostile.Process.CommandLine = strings.Repeat("<!channel> ``` ", event.MaxCommandLine/15)
	b.Run("Slack/hostile-8KiB-command", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = Slack(hostile, Options{})
		}
	})
}
