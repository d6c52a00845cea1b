// Package slackstub is an in-process stand-in for Slack that speaks the two
// protocols whalewatch posts alerts with, closely enough that a client which
// passes against it passes against Slack:
//
//   - incoming webhooks: POST /services/T000/B000/XXX with a JSON body. Slack
//     answers 200 "ok", or an error code as a text/html body with a 4xx status
//     (400 invalid_payload, invalid_blocks, no_text; 404 no_service, ...).
//
//   - the Web API method chat.postMessage: POST /api/chat.postMessage with a
//     form-encoded body (what slack-go sends: token, channel, text and blocks
//     as a JSON string) or a JSON body with the token as "Authorization:
//     Bearer". Slack answers 200 with {"ok":true,"channel":...,"ts":...} or
//     {"ok":false,"error":"invalid_auth"|"channel_not_found"|...}.
//
//   - chat.update: replaces a posted message's text, blocks and attachments.
//
// Both validate Block Kit as Slack does for what whalewatch sends (known block
// types, text objects, attachments around blocks, the length and count
// limits) and reject what Slack rejects. Knobs make the next requests fail
// (FailNext: HTTP 5xx or 429 with Retry-After, whose form SetRetryAfter sets;
// FailFor: an outage; RejectNext: a Slack error code), make Slack slow
// (SetDelay) or lose its answers after posting (LoseNextAnswers); accessors
// return what was accepted and what was rejected.
package slackstub

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

// Defaults of a new Server.
const (
	// WebhookPath is the path of the stub's one incoming webhook.
	WebhookPath = "/services/T000/B000/XXX"
	// Token is the bot token chat.postMessage accepts.
	Token = "xoxb-000-000-whalewatchstub"
	// ChannelID and ChannelName name the one channel that exists.
	ChannelID   = "C0WHALEWATCH"
	ChannelName = "alerts"
)

// Slack's Block Kit limits, in characters.
const (
	MaxBlocks      = 50
	MaxHeaderText  = 150
	MaxSectionText = 3000
	MaxFields      = 10
	MaxFieldText   = 2000
	MaxContextElem = 10
	MaxTextObject  = 3000
	MaxBlockID     = 255
	maxBody        = 1 << 20
)

// Endpoints, the values of Message.Endpoint.
const (
	EndpointWebhook     = "webhook"
	EndpointPostMessage = "chat.postMessage"
	EndpointUpdate      = "chat.update"
)

// Text is a Block Kit text object.
type Text struct {
	Type     string `json:"type"`
	Text     string `json:"text"`
	Emoji    *bool  `json:"emoji,omitempty"`
	Verbatim bool   `json:"verbatim,omitempty"`
}

// Block is a parsed Block Kit block. Text, Fields and Elements are filled for
// the block types that have them; Raw is the block as sent.
type Block struct {
	Type     string          `json:"type"`
	BlockID  string          `json:"block_id,omitempty"`
	Text     *Text           `json:"text,omitempty"`
	Fields   []Text          `json:"fields,omitempty"`
	Elements []Text          `json:"-"` // the text elements of a context block
	Raw      json.RawMessage `json:"-"`
}

// Attachment is a legacy attachment as whalewatch uses it: a colour bar
// around Block Kit blocks.
type Attachment struct {
	Color    string  `json:"color,omitempty"`
	Fallback string  `json:"fallback,omitempty"`
	Blocks   []Block `json:"-"`
}

// Message is one message the stub accepted.
type Message struct {
	Endpoint string // EndpointWebhook or EndpointPostMessage
	Channel  string // channel id (chat.postMessage only)
	TS       string // message timestamp (chat.postMessage only)
	Text     string
	// Blocks are every block of the message: the top-level ones, then those
	// of its attachments (which Slack shows inside the attachment's colour
	// bar), so that a test reads the message as a reader sees it.
	Blocks      []Block
	Attachments []Attachment
	Parse       string    // the "parse" argument as sent ("none" turns off Slack's own linking)
	Raw         []byte    // the request body as received (of the last update, once updated)
	At          time.Time // when the stub received it
	// Updates counts the chat.update calls that changed this message.
	Updates int
}

// AllText is the message's text and the text of all its blocks, one per line.
func (m Message) AllText() string {
	var b strings.Builder
	b.WriteString(m.Text)
	add := func(t *Text) {
		if t != nil {
			b.WriteByte('\n')
			b.WriteString(t.Text)
		}
	}
	for _, bl := range m.Blocks {
		add(bl.Text)
		for i := range bl.Fields {
			add(&bl.Fields[i])
		}
		for i := range bl.Elements {
			add(&bl.Elements[i])
		}
	}
	return b.String()
}

// Mentions reports whether s occurs in AllText.
func (m Message) Mentions(s string) bool { return strings.Contains(m.AllText(), s) }

// Rejection is a request the stub answered with an error.
type Rejection struct {
	Endpoint string
	Status   int
	Error    string // the Slack error code
	Raw      []byte
	At       time.Time
}

// Server is a running stub.
type Server struct {
	srv *httptest.Server

	mu        sync.Mutex
	token     string
	channels  map[string]string // id and name (with and without '#') -> id
	messages  []Message
	rejected  []Rejection
	requests  int
	failN     int
	failCode  int
	rejectN   int
	rejectErr string
	ts        int

	delay      time.Duration // before answering each request
	failUntil  time.Time     // answer failCode until then
	retryAfter *string       // Retry-After of injected 429s; nil means "1"
	loseN      int           // accept, then drop the connection without an answer
}

// Option configures a Server.
type Option func(*Server)

// WithToken sets the bot token chat.postMessage accepts (default Token).
func WithToken(token string) Option { return func(s *Server) { s.token = token } }

// WithChannel adds a channel that exists, by id and name (without '#').
func WithChannel(id, name string) Option {
	return func(s *Server) {
		s.channels[id] = id
		if name != "" {
			s.channels[name], s.channels["#"+name] = id, id
		}
	}
}

// New starts a stub on a loopback port; it is closed when the test ends.
// By default it accepts the token Token and has one channel, ChannelID
// (#alerts).
func New(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	s := &Server{token: Token, channels: map[string]string{}}
	WithChannel(ChannelID, ChannelName)(s)
	for _, o := range opts {
		o(s)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/services/", s.webhook)
	mux.HandleFunc("/api/", s.api)
	s.srv = httptest.NewServer(mux)
	tb.Cleanup(s.srv.Close)
	return s
}

// URL is the stub's base URL.
func (s *Server) URL() string { return s.srv.URL }

// WebhookURL is the URL of the stub's incoming webhook.
func (s *Server) WebhookURL() string { return s.srv.URL + WebhookPath }

// APIURL is the Web API base URL, for slack.OptionAPIURL.
func (s *Server) APIURL() string { return s.srv.URL + "/api/" }

// Close stops the stub, so that clients see connection errors.
func (s *Server) Close() { s.srv.Close() }

// FailNext makes the next n requests, on either endpoint, answer the HTTP
// status code without looking at them, with the status text as the body. A
// 429 carries "Retry-After: 1" and the body "ratelimited".
func (s *Server) FailNext(n, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failN, s.failCode = n, status
}

// SetDelay makes the stub take d to answer every later request, as a slow
// Slack does: a message is accepted when the request arrives and answered d
// later, so a client that gives up sooner has posted it without knowing.
func (s *Server) SetDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay = d
}

// FailFor makes every request in the next d answer the HTTP status, as an
// outage does.
func (s *Server) FailFor(d time.Duration, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failUntil, s.failCode = time.Now().Add(d), status
}

// SetRetryAfter sets the Retry-After header of injected 429 answers: an
// integer, an HTTP date, a fraction, or "" for none.
func (s *Server) SetRetryAfter(v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.retryAfter = &v
}

// LoseNextAnswers makes the next n well-formed requests post their message
// and then drop the connection without answering: the answer is lost.
func (s *Server) LoseNextAnswers(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loseN = n
}

// RejectNext makes the next n well-formed requests answer the Slack error
// code, as Slack would (a 4xx for webhooks, {"ok":false} for the Web API).
func (s *Server) RejectNext(n int, code string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rejectN, s.rejectErr = n, code
}

// Messages returns the accepted messages, oldest first.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.messages...)
}

// Rejections returns the requests answered with an error, oldest first.
func (s *Server) Rejections() []Rejection {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Rejection(nil), s.rejected...)
}

// Requests counts every request received, accepted or not.
func (s *Server) Requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests
}

// Mentioning returns the accepted messages that mention str.
func (s *Server) Mentioning(str string) []Message {
	var out []Message
	for _, m := range s.Messages() {
		if m.Mentions(str) {
			out = append(out, m)
		}
	}
	return out
}

// injected counts the request and returns the HTTP failure to answer it
// with, or 0.
func (s *Server) injected() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests++
	if s.failN > 0 {
		s.failN--
		return s.failCode
	}
	if time.Now().Before(s.failUntil) {
		return s.failCode
	}
	return 0
}

// wait sleeps for the configured delay, or until the client went away.
func (s *Server) wait(r *http.Request) {
	s.mu.Lock()
	d := s.delay
	s.mu.Unlock()
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
	}
}

// loseAnswer drops the connection without an answer when told to, and
// reports whether it did.
func (s *Server) loseAnswer(w http.ResponseWriter) bool {
	s.mu.Lock()
	lose := s.loseN > 0
	if lose {
		s.loseN--
	}
	s.mu.Unlock()
	if !lose {
		return false
	}
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			_ = conn.Close()
			return true
		}
	}
	panic(http.ErrAbortHandler) // closes the connection without an answer
}

func (s *Server) takeReject() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rejectN > 0 {
		s.rejectN--
		return s.rejectErr
	}
	return ""
}

func (s *Server) reject(r Rejection) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r.At = time.Now()
	s.rejected = append(s.rejected, r)
}

// update replaces the text, blocks and attachments of the message m.TS in
// m.Channel, as chat.update does, and reports whether it exists.
func (s *Server) update(m Message) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.messages {
		old := &s.messages[i]
		if old.TS == m.TS && old.Channel == m.Channel && old.Endpoint == EndpointPostMessage {
			old.Text, old.Blocks, old.Attachments, old.Raw = m.Text, m.Blocks, m.Attachments, m.Raw
			old.Updates++
			return true
		}
	}
	return false
}

func (s *Server) accept(m Message) Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ts++
	m.TS = fmt.Sprintf("1700000000.%06d", s.ts)
	m.At = time.Now()
	s.messages = append(s.messages, m)
	return m
}

// failInjected answers an injected HTTP failure and reports whether it did.
func (s *Server) failInjected(w http.ResponseWriter, endpoint string, api bool) bool {
	status := s.injected()
	if status == 0 {
		return false
	}
	code := http.StatusText(status) // what a proxy or Slack's edge answers
	if status == http.StatusTooManyRequests {
		s.mu.Lock()
		ra := "1"
		if s.retryAfter != nil {
			ra = *s.retryAfter
		}
		s.mu.Unlock()
		if ra != "" {
			w.Header().Set("Retry-After", ra)
		}
		code = "ratelimited"
	}
	s.reject(Rejection{Endpoint: endpoint, Status: status, Error: code})
	if api {
		writeJSON(w, status, map[string]any{"ok": false, "error": code})
	} else {
		writeText(w, status, code)
	}
	return true
}

// webhookStatus is the HTTP status Slack answers a webhook error code with.
func webhookStatus(code string) int {
	switch code {
	case "channel_not_found", "no_service", "team_disabled":
		return http.StatusNotFound
	case "invalid_token", "action_prohibited", "posting_to_general_channel_denied":
		return http.StatusForbidden
	case "channel_is_archived":
		return http.StatusGone
	case "rate_limited", "ratelimited":
		return http.StatusTooManyRequests
	}
	return http.StatusBadRequest
}

func (s *Server) webhook(w http.ResponseWriter, r *http.Request) {
	if s.failInjected(w, EndpointWebhook, false) {
		return
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	fail := func(code string) {
		status := webhookStatus(code)
		s.reject(Rejection{Endpoint: EndpointWebhook, Status: status, Error: code, Raw: body})
		writeText(w, status, code)
	}
	switch {
	case r.Method != http.MethodPost:
		s.reject(Rejection{Endpoint: EndpointWebhook, Status: http.StatusMethodNotAllowed, Error: "invalid_method"})
		writeText(w, http.StatusMethodNotAllowed, "invalid_method")
		return
	case r.URL.Path != WebhookPath:
		fail("no_service")
		return
	case len(body) > maxBody:
		fail("invalid_payload")
		return
	}
	var p struct {
		Text        *string         `json:"text"`
		Blocks      json.RawMessage `json:"blocks"`
		Attachments json.RawMessage `json:"attachments"`
		Parse       string          `json:"parse"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		fail("invalid_payload")
		return
	}
	text := ""
	if p.Text != nil {
		text = *p.Text
	}
	m := Message{Endpoint: EndpointWebhook, Text: text, Raw: body, Parse: p.Parse}
	if code := s.parseBlocks(&m, p.Blocks, p.Attachments); code != "" {
		fail(code)
		return
	}
	if code := s.takeReject(); code != "" {
		fail(code)
		return
	}
	s.accept(m)
	if s.loseAnswer(w) {
		return
	}
	s.wait(r)
	writeText(w, http.StatusOK, "ok")
}

// parseBlocks fills m.Blocks and m.Attachments from raw and attachments and
// returns a Slack error code when they are invalid or when there is neither
// text nor blocks.
func (s *Server) parseBlocks(m *Message, raw, attachments json.RawMessage) string {
	if len(raw) > 0 && string(raw) != "null" {
		blocks, err := ParseBlocks(raw)
		if err != nil {
			return "invalid_blocks"
		}
		m.Blocks = blocks
	}
	if len(attachments) > 0 && string(attachments) != "null" {
		var as []struct {
			Attachment
			Blocks json.RawMessage `json:"blocks"`
		}
		if err := json.Unmarshal(attachments, &as); err != nil {
			return "invalid_attachments"
		}
		if len(as) > 100 {
			return "too_many_attachments"
		}
		for _, a := range as {
			att := a.Attachment
			if len(a.Blocks) > 0 {
				blocks, err := ParseBlocks(a.Blocks)
				if err != nil {
					return "invalid_blocks"
				}
				att.Blocks = blocks
				m.Blocks = append(m.Blocks, blocks...)
			}
			m.Attachments = append(m.Attachments, att)
		}
	}
	if strings.TrimSpace(m.Text) == "" && len(m.Blocks) == 0 && len(m.Attachments) == 0 {
		return "no_text"
	}
	return ""
}

func (s *Server) api(w http.ResponseWriter, r *http.Request) {
	update := r.URL.Path == "/api/chat.update"
	if r.URL.Path != "/api/chat.postMessage" && !update {
		writeJSON(w, http.StatusOK, map[string]any{"ok": false, "error": "unknown_method"})
		return
	}
	endpoint := EndpointPostMessage
	if update {
		endpoint = EndpointUpdate
	}
	if s.failInjected(w, endpoint, true) {
		return
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	fail := func(code string) {
		status := http.StatusOK
		if code == "ratelimited" {
			status = http.StatusTooManyRequests
			w.Header().Set("Retry-After", "1")
		}
		s.reject(Rejection{Endpoint: endpoint, Status: status, Error: code, Raw: body})
		writeJSON(w, status, map[string]any{"ok": false, "error": code})
	}
	if r.Method != http.MethodPost {
		fail("invalid_request")
		return
	}
	if len(body) > maxBody {
		fail("request_too_large")
		return
	}
	var (
		token, channel, text, ts, parse string
		blocks, attachments             json.RawMessage
	)
	if auth := r.Header.Get("Authorization"); auth != "" {
		var ok bool
		if token, ok = strings.CutPrefix(auth, "Bearer "); !ok {
			fail("invalid_auth")
			return
		}
	}
	ctype, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch ctype {
	case "application/json":
		var p struct {
			Channel     string          `json:"channel"`
			Text        string          `json:"text"`
			TS          string          `json:"ts"`
			Parse       string          `json:"parse"`
			Blocks      json.RawMessage `json:"blocks"`
			Attachments json.RawMessage `json:"attachments"`
		}
		if err := json.Unmarshal(body, &p); err != nil {
			fail("invalid_json")
			return
		}
		channel, text, ts, parse, blocks, attachments = p.Channel, p.Text, p.TS, p.Parse, p.Blocks, p.Attachments
	case "application/x-www-form-urlencoded":
		form, err := url.ParseQuery(string(body))
		if err != nil {
			fail("invalid_form_data")
			return
		}
		if token == "" {
			token = form.Get("token") // slack-go sends the token in the form
		}
		channel, text, ts, parse = form.Get("channel"), form.Get("text"), form.Get("ts"), form.Get("parse")
		if b := form.Get("blocks"); b != "" {
			blocks = json.RawMessage(b)
		}
		if a := form.Get("attachments"); a != "" {
			attachments = json.RawMessage(a)
		}
	default:
		fail("invalid_form_data")
		return
	}
	s.mu.Lock()
	want := s.token
	chID, known := s.channels[channel]
	s.mu.Unlock()
	switch {
	case token == "":
		fail("not_authed")
		return
	case token != want:
		fail("invalid_auth")
		return
	case channel == "" || !known:
		fail("channel_not_found")
		return
	}
	m := Message{Endpoint: EndpointPostMessage, Channel: chID, Text: text, Raw: body, Parse: parse}
	if code := s.parseBlocks(&m, blocks, attachments); code != "" {
		fail(code)
		return
	}
	if code := s.takeReject(); code != "" {
		fail(code)
		return
	}
	if update {
		m.TS = ts
		if !s.update(m) {
			fail("message_not_found")
			return
		}
		s.wait(r)
		writeJSON(w, http.StatusOK, map[string]any{"ok": true, "channel": m.Channel, "ts": m.TS, "text": m.Text})
		return
	}
	m = s.accept(m)
	if s.loseAnswer(w) {
		return
	}
	s.wait(r)
	writeJSON(w, http.StatusOK, map[string]any{
		"ok": true, "channel": m.Channel, "ts": m.TS,
		"message": map[string]any{"type": "message", "text": m.Text, "ts": m.TS},
	})
}

func writeText(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "text/html")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// knownBlocks are the block types Slack accepts in messages.
var knownBlocks = map[string]bool{
	"actions": true, "context": true, "divider": true, "file": true, "header": true,
	"image": true, "input": true, "markdown": true, "rich_text": true, "section": true,
	"video": true, "table": true,
}

// ParseBlocks parses and validates a Block Kit "blocks" array as Slack does
// for messages.
func ParseBlocks(raw json.RawMessage) ([]Block, error) {
	var raws []json.RawMessage
	if err := json.Unmarshal(raw, &raws); err != nil {
		return nil, fmt.Errorf("blocks is not an array: %w", err)
	}
	if len(raws) > MaxBlocks {
		return nil, fmt.Errorf("%d blocks, limit %d", len(raws), MaxBlocks)
	}
	out := make([]Block, 0, len(raws))
	for i, r := range raws {
		b, err := parseBlock(r)
		if err != nil {
			return nil, fmt.Errorf("block %d: %w", i, err)
		}
		out = append(out, b)
	}
	return out, nil
}

func parseBlock(raw json.RawMessage) (Block, error) {
	var b struct {
		Block
		Elements []json.RawMessage `json:"elements"`
	}
	if err := json.Unmarshal(raw, &b); err != nil {
		return Block{}, err
	}
	blk := b.Block
	blk.Raw = raw
	if !knownBlocks[blk.Type] {
		return blk, fmt.Errorf("unknown block type %q", blk.Type)
	}
	if utf8.RuneCountInString(blk.BlockID) > MaxBlockID {
		return blk, errors.New("block_id too long")
	}
	switch blk.Type {
	case "header":
		if blk.Text == nil || blk.Text.Type != "plain_text" {
			return blk, errors.New("header needs a plain_text text object")
		}
		if err := checkText(*blk.Text, MaxHeaderText); err != nil {
			return blk, fmt.Errorf("header: %w", err)
		}
	case "section":
		if blk.Text == nil && len(blk.Fields) == 0 {
			return blk, errors.New("section needs text or fields")
		}
		if blk.Text != nil {
			if err := checkText(*blk.Text, MaxSectionText); err != nil {
				return blk, fmt.Errorf("section text: %w", err)
			}
		}
		if len(blk.Fields) > MaxFields {
			return blk, fmt.Errorf("section has %d fields, limit %d", len(blk.Fields), MaxFields)
		}
		for j, f := range blk.Fields {
			if err := checkText(f, MaxFieldText); err != nil {
				return blk, fmt.Errorf("section field %d: %w", j, err)
			}
		}
	case "context":
		if len(b.Elements) == 0 || len(b.Elements) > MaxContextElem {
			return blk, fmt.Errorf("context has %d elements, want 1 to %d", len(b.Elements), MaxContextElem)
		}
		for j, e := range b.Elements {
			var t Text
			if err := json.Unmarshal(e, &t); err != nil {
				return blk, fmt.Errorf("context element %d: %w", j, err)
			}
			if t.Type == "image" {
				continue
			}
			if err := checkText(t, MaxTextObject); err != nil {
				return blk, fmt.Errorf("context element %d: %w", j, err)
			}
			blk.Elements = append(blk.Elements, t)
		}
	}
	return blk, nil
}

func checkText(t Text, max int) error {
	switch t.Type {
	case "plain_text":
	case "mrkdwn":
		if t.Emoji != nil {
			return errors.New("emoji is not allowed on mrkdwn")
		}
	default:
		return fmt.Errorf("text type %q: want plain_text or mrkdwn", t.Type)
	}
	if !utf8.ValidString(t.Text) {
		return errors.New("text is not valid UTF-8")
	}
	n := utf8.RuneCountInString(t.Text)
	if n == 0 {
		return errors.New("text is empty")
	}
	if n > max {
		return fmt.Errorf("text has %d characters, limit %d", n, max)
	}
	return nil
}
