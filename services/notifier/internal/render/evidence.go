package render

import (
	"strconv"
	"strings"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// Budgets of the evidence a threat carries (issue 11). The event bounds its
// lists already (pkg/event: 16 ancestors, 32 items of 256 bytes or more);
// render shows less, so that a message stays readable and each section is
// well within MaxSection whatever the threat holds.
const (
	maxAncestors    = 8   // ancestors shown in the process tree
	maxActivity     = 5   // last items of each evidence list shown
	maxEvidenceItem = 240 // bytes of one escaped line (ancestor or item)
	maxRulesShown   = 5   // rules of an incident named in its field
	maxActivityKind = 900 // bytes of one kind of activity (3 kinds < MaxSection)
)

// codeLines renders items as the lines of one ``` code block, each escaped
// for code and cut to maxEvidenceItem, the whole at most max bytes
// (fences included): whole lines only, then "…" when some did not fit.
// Escaped code cannot hold ``` (escape puts a zero-width space between
// adjacent backticks and after a leading one), nor a line break (escape
// turns CR, LF, U+2028 and U+2029 into spaces), so every item is one line
// and the block closes where render closes it. "" when no item has text.
func codeLines(items []string, max int) string {
	const open, close = "```", "```"
	var w bounded
	w.init(max-len(open)-len(close), 1024)
	n := 0
	for _, it := range items {
		line := escape(it, maxEvidenceItem, true)
		if strings.TrimSpace(line) == "" {
			continue
		}
		if n > 0 {
			line = "\n" + line
		}
		if !w.add(line) {
			break
		}
		n++
	}
	if n == 0 {
		return ""
	}
	return open + w.String() + close
}

// processTree is the section of the process's ancestors, parent first, one
// line each: "4200 sh -c nc -l -p 4444" (the name or the executable when
// the command line is unknown). "" when there are none.
func processTree(anc []event.Ancestor) string {
	if len(anc) == 0 {
		return ""
	}
	lines := make([]string, 0, min(len(anc), maxAncestors)+1)
	for _, a := range anc[:min(len(anc), maxAncestors)] {
		what := a.CommandLine
		if strings.TrimSpace(what) == "" {
			what = a.Name
		}
		if strings.TrimSpace(what) == "" {
			what = a.Executable
		}
		lines = append(lines, strconv.Itoa(a.PID)+" "+what)
	}
	if more := len(anc) - maxAncestors; more > 0 {
		lines = append(lines, "+"+strconv.Itoa(more)+" more ancestors")
	}
	const title = "*Process tree* (parent first)\n"
	code := codeLines(lines, MaxSection-len(title))
	if code == "" {
		return ""
	}
	return title + code
}

// activity is the section of the container's recent activity: the last
// few log lines, file changes and connections, most recent last. "" when
// the threat carries none.
func activity(ev *event.Evidence) string {
	if ev == nil {
		return ""
	}
	var b strings.Builder
	for _, k := range []struct {
		title string
		items []string
	}{
		{"Log lines", ev.LogLines},
		{"File changes", ev.FileChanges},
		{"Connections", ev.Connections},
	} {
		items := k.items[max(0, len(k.items)-maxActivity):]
		head := "\n" + k.title
		if len(k.items) > len(items) {
			head += " (last " + strconv.Itoa(len(items)) + " of " + strconv.Itoa(len(k.items)) + ")"
		}
		head += "\n"
		if code := codeLines(items, maxActivityKind-len(head)); code != "" {
			b.WriteString(head + code)
		}
	}
	if b.Len() == 0 {
		return ""
	}
	return "*Recent activity*" + b.String()
}

// incident is the value of the Incident field: the short id, the count and
// the rules that fired in it, "a1b2c3d4e5f6 · 3 threats\nrules x, y". (Not
// when it opened: a date token's fallback holds colons, which a field must
// not pair.)
func incident(in *event.Incident) string {
	id := shortID(in.ID)
	rules := in.Rules[:min(len(in.Rules), maxRulesShown)]
	// One set of markers for the id and every rule: a marker in one could
	// pair with one in another, as with piece.
	marks := formatting(id+" "+strings.Join(rules, " ")) | 7
	s := escapeMarks(id, 64, false, marks)
	if strings.TrimSpace(s) == "" {
		s = "-"
	}
	if in.Count > 1 {
		s += " · " + strconv.Itoa(in.Count) + " threats"
	}
	if len(rules) > 0 {
		names := make([]string, 0, len(rules)+1)
		for _, r := range rules {
			names = append(names, escapeMarks(r, 64, false, marks))
		}
		if more := len(in.Rules) - len(rules); more > 0 {
			names = append(names, "+"+strconv.Itoa(more))
		}
		s += "\nrules " + strings.Join(names, ", ")
	}
	return s
}

// sha256Short is the first 12 hex digits of a SHA-256 digest, or "" when
// digest is not one (it travels on the wire like everything else).
func sha256Short(digest string) string {
	if len(digest) != 64 {
		return ""
	}
	for i := 0; i < len(digest); i++ {
		c := digest[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return ""
		}
	}
	return strings.ToLower(digest[:12])
}
