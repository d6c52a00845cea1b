package render

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// ellipsis marks text cut to fit a limit.
const ellipsis = "…"

// zwsp (zero-width space) separates backticks so that no run of them in
// attacker text can close a code block.
const zwsp = "\u200b"

// bounded builds a string of at most max bytes. Once a piece does not fit,
// the output is cut back to the last point that leaves room for the ellipsis
// and the ellipsis is appended; pieces are never split, so neither are runes
// or entities. Callers keep it in a local variable, so that it stays on the
// stack.
type bounded struct {
	b    strings.Builder
	max  int
	fits int    // length up to which the ellipsis still fits after
	cut  string // the result, once something did not fit
	full bool
}

// init sets the limit and reserves room for about hint bytes.
func (w *bounded) init(max, hint int) {
	w.max = max
	w.b.Grow(min(hint, max))
}

// add appends piece and reports whether it fitted.
func (w *bounded) add(piece string) bool {
	if !w.room(len(piece)) {
		return false
	}
	w.b.WriteString(piece)
	w.mark()
	return true
}

// addRune appends r (U+FFFD for utf8.RuneError) and reports whether it fitted.
func (w *bounded) addRune(r rune) bool {
	if !w.room(utf8.RuneLen(r)) { // RuneError is written as U+FFFD, 3 bytes
		return false
	}
	w.b.WriteRune(r)
	w.mark()
	return true
}

// room reports whether n more bytes fit; when they do not, it cuts the output
// back and appends the ellipsis, and nothing fits any more.
func (w *bounded) room(n int) bool {
	if w.full {
		return false
	}
	if w.b.Len()+n <= w.max {
		return true
	}
	w.full = true
	if w.max >= len(ellipsis) {
		w.cut = w.b.String()[:w.fits] + ellipsis
	}
	return false
}

func (w *bounded) mark() {
	if w.b.Len() <= w.max-len(ellipsis) {
		w.fits = w.b.Len()
	}
}

func (w *bounded) String() string {
	if w.full {
		return w.cut
	}
	return w.b.String()
}

func (w *bounded) Len() int { return len(w.String()) }

// escape returns s as Slack mrkdwn that displays s literally, in at most max
// bytes. Slack counts characters; a byte limit is stricter, so a text within
// max bytes is within max characters.
//
//   - '&', '<' and '>' become &amp; &lt; &gt;, so that no control sequence
//     (<!channel>, <@U123>, <https://evil|click>) can be formed;
//   - tab, CR and LF become spaces, other control characters (C0, DEL, C1)
//     and Unicode bidi controls are dropped, and invalid UTF-8 becomes U+FFFD;
//   - in code (inside a ``` block) a zero-width space goes between adjacent
//     backticks and between a backtick and either end of the text, so no
//     ``` can close the block early;
//   - text that does not fit is cut on a character boundary, never inside an
//     entity, and ends with "…".
func escape(s string, max int, code bool) string {
	var marks markers
	if !code {
		marks = formatting(s)
	}
	return escapeMarks(s, max, code, marks)
}

// piece is escape for a value that render joins with others into one text:
// every *, _ and ~ is neutralised, since a marker in one value could pair
// with one in the next (an :emoji: code cannot span the spaces between
// values, so ':' is neutralised as escape does).
func piece(s string, max int) string { return escapeMarks(s, max, false, formatting(s)|7) }

// sentence joins pieces (render's own template text and values escaped
// already) into at most max bytes, never splitting a piece.
func sentence(max int, pieces ...string) string {
	var w bounded
	w.init(max, 256)
	for _, p := range pieces {
		if !w.add(p) {
			break
		}
	}
	if strings.TrimSpace(w.String()) == "" {
		return "-"
	}
	return w.String()
}

func escapeMarks(s string, max int, code bool, marks markers) string {
	var w bounded
	w.init(max, len(s))
	prevTick := code // the opening fence counts as a backtick
	for i, r := range s {
		var piece string
		switch {
		case !code && r < utf8.RuneSelf && marks.has(byte(r)):
			piece = zwsp + string(r)
		case r == '@' && mentionWord(s[i+1:]):
			piece = "@" + zwsp
		case r == '&':
			piece = "&amp;"
		case r == '<':
			piece = "&lt;"
		case r == '>':
			piece = "&gt;"
		case r == '\t' || r == '\n' || r == '\r' || r == '\u2028' || r == '\u2029':
			piece = " "
		case isControl(r):
			continue
		case r == '`' && code && prevTick:
			piece = zwsp + "`"
		default:
			if !w.addRune(r) {
				return w.String()
			}
			prevTick = r == '`'
			continue
		}
		if !w.add(piece) {
			return w.String()
		}
		prevTick = r == '`'
	}
	if code && prevTick && w.Len() > 0 {
		w.add(zwsp) // the closing fence follows
	}
	return w.String()
}

// markers is the set of mrkdwn formatting characters (* _ ~ :) that occur
// at least twice in a text, so could open and close bold, italics,
// strike-through or an :emoji: code. Each of them gets a zero-width space in
// front: Slack only formats from a marker at a word boundary, and an emoji
// name cannot hold one. A marker that occurs once cannot format and is left
// alone, so "nginx:1.27" and "my_app" read as they are.
type markers uint8

func formatting(s string) markers {
	var n [4]int
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '*':
			n[0]++
		case '_':
			n[1]++
		case '~':
			n[2]++
		case ':':
			n[3]++
		}
	}
	var m markers
	for i, c := range n {
		if c >= 2 {
			m |= 1 << i
		}
	}
	return m
}

func (m markers) has(c byte) bool {
	switch c {
	case '*':
		return m&1 != 0
	case '_':
		return m&2 != 0
	case '~':
		return m&4 != 0
	case ':':
		return m&8 != 0
	}
	return false
}

// mentionWord reports whether s (what follows an '@') starts with a word that
// Slack would turn into a broadcast mention where parsing is on.
func mentionWord(s string) bool {
	for _, w := range []string{"channel", "here", "everyone"} {
		if len(s) >= len(w) && strings.EqualFold(s[:len(w)], w) {
			return true
		}
	}
	return false
}

// isControl reports whether r is a control character (C0, DEL, C1) or a
// Unicode bidi control, which could reorder the text around it.
func isControl(r rune) bool {
	if r < utf8.RuneSelf {
		return r < ' ' || r == 0x7f
	}
	// U+2028 and U+2029 break lines in many viewers, and JavaScript strings.
	return unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r) || r == '\u2028' || r == '\u2029'
}

// value is escape for a field value: never empty, because Slack rejects an
// empty text object.
func value(s string, max int) string {
	if v := escape(s, max, false); strings.TrimSpace(v) != "" {
		return v
	}
	return "-"
}

// plain returns s with control and bidi characters made visible as Go escapes
// (\n, \x1b, \u202e) and invalid UTF-8 as U+FFFD, in at most max bytes: text
// that cannot break, recolour or reorder the terminal or log line it is in.
func plain(s string, max int) string {
	var w bounded
	w.init(max, len(s))
	for _, r := range s {
		var ok bool
		if isControl(r) {
			ok = w.add(strings.Trim(strconv.QuoteRuneToASCII(r), "'"))
		} else {
			ok = w.addRune(r)
		}
		if !ok {
			break
		}
	}
	return w.String()
}

// token is plain for the value of a key=value pair, but Go-quoted when it is
// empty or holds a space, '=' or '"', so that it cannot pose as another pair.
func token(s string, max int) string {
	if p := plain(s, max); p != "" && !strings.ContainsAny(p, " =\"") {
		return p
	}
	return strconv.Quote(event.Truncate(s, max)) // Quote escapes what plain would
}
