package slackstub_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/whalewatch/whalewatch/testkit/slackstub"
)

func post(t *testing.T, u, ctype, auth, body string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", ctype)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

const goodBlocks = `[{"type":"header","text":{"type":"plain_text","text":"HIGH netcat","emoji":true}},` +
	`{"type":"section","fields":[{"type":"mrkdwn","text":"*Host*\nh1"}]},` +
	`{"type":"context","elements":[{"type":"mrkdwn","text":"id 42"}]}]`

func TestWebhook(t *testing.T) {
	t.Parallel()
	many := make([]string, 51)
	for i := range many {
		many[i] = `{"type":"divider"}`
	}
	fields := make([]string, 11)
	for i := range fields {
		fields[i] = `{"type":"mrkdwn","text":"f"}`
	}
	tests := []struct {
		name, path, body string
		status           int
		answer           string
	}{
		{"blocks", slackstub.WebhookPath, `{"text":"fallback","blocks":` + goodBlocks + `}`, 200, "ok"},
		{"text only", slackstub.WebhookPath, `{"text":"hello"}`, 200, "ok"},
		{"wrong path", "/services/T000/B000/YYY", `{"text":"hello"}`, 404, "no_service"},
		{"not json", slackstub.WebhookPath, `text=hello`, 400, "invalid_payload"},
		{"empty", slackstub.WebhookPath, `{"text":" "}`, 400, "no_text"},
		{"unknown block", slackstub.WebhookPath, `{"blocks":[{"type":"banner"}]}`, 400, "invalid_blocks"},
		{"header mrkdwn", slackstub.WebhookPath, `{"blocks":[{"type":"header","text":{"type":"mrkdwn","text":"x"}}]}`, 400, "invalid_blocks"},
		{"header too long", slackstub.WebhookPath, `{"blocks":[{"type":"header","text":{"type":"plain_text","text":"` + strings.Repeat("é", 151) + `"}}]}`, 400, "invalid_blocks"},
		{"header at limit", slackstub.WebhookPath, `{"blocks":[{"type":"header","text":{"type":"plain_text","text":"` + strings.Repeat("é", 150) + `"}}]}`, 200, "ok"},
		{"section text too long", slackstub.WebhookPath, `{"blocks":[{"type":"section","text":{"type":"mrkdwn","text":"` + strings.Repeat("x", 3001) + `"}}]}`, 400, "invalid_blocks"},
		{"field too long", slackstub.WebhookPath, `{"blocks":[{"type":"section","fields":[{"type":"mrkdwn","text":"` + strings.Repeat("x", 2001) + `"}]}]}`, 400, "invalid_blocks"},
		{"too many fields", slackstub.WebhookPath, `{"blocks":[{"type":"section","fields":[` + strings.Join(fields, ",") + `]}]}`, 400, "invalid_blocks"},
		{"empty section", slackstub.WebhookPath, `{"blocks":[{"type":"section"}]}`, 400, "invalid_blocks"},
		{"emoji on mrkdwn", slackstub.WebhookPath, `{"blocks":[{"type":"section","text":{"type":"mrkdwn","text":"x","emoji":true}}]}`, 400, "invalid_blocks"},
		{"too many blocks", slackstub.WebhookPath, `{"blocks":[` + strings.Join(many, ",") + `]}`, 400, "invalid_blocks"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := slackstub.New(t)
			status, _, body := post(t, s.URL()+tt.path, "application/json", "", tt.body)
			if status != tt.status || body != tt.answer {
				t.Fatalf("got %d %q, want %d %q", status, body, tt.status, tt.answer)
			}
			if ok := tt.status == 200; ok != (len(s.Messages()) == 1) || ok == (len(s.Rejections()) == 1) {
				t.Fatalf("accepted %d, rejected %d", len(s.Messages()), len(s.Rejections()))
			}
		})
	}
}

func TestWebhookRecordsMessage(t *testing.T) {
	t.Parallel()
	s := slackstub.New(t)
	body := `{"text":"fallback","blocks":` + goodBlocks + `}`
	if status, _, _ := post(t, s.WebhookURL(), "application/json", "", body); status != 200 {
		t.Fatalf("status %d", status)
	}
	msgs := s.Messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages", len(msgs))
	}
	m := msgs[0]
	if m.Endpoint != slackstub.EndpointWebhook || m.Text != "fallback" || string(m.Raw) != body {
		t.Fatalf("message %+v", m)
	}
	if len(m.Blocks) != 3 || m.Blocks[0].Text.Text != "HIGH netcat" || m.Blocks[1].Fields[0].Text != "*Host*\nh1" || m.Blocks[2].Elements[0].Text != "id 42" {
		t.Fatalf("blocks %+v", m.Blocks)
	}
	if len(s.Mentioning("h1")) != 1 || len(s.Mentioning("id 42")) != 1 || len(s.Mentioning("nowhere")) != 0 {
		t.Fatal("Mentioning does not search all texts")
	}
}

func TestPostMessage(t *testing.T) {
	t.Parallel()
	form := func(token, channel, text, blocks string) string {
		v := url.Values{"channel": {channel}, "text": {text}}
		if token != "" {
			v.Set("token", token)
		}
		if blocks != "" {
			v.Set("blocks", blocks)
		}
		return v.Encode()
	}
	const formType, jsonType = "application/x-www-form-urlencoded", "application/json; charset=utf-8"
	bearer := "Bearer " + slackstub.Token
	tests := []struct {
		name, ctype, auth, body, err string
	}{
		{"form token", formType, "", form(slackstub.Token, slackstub.ChannelID, "hi", goodBlocks), ""},
		{"form bearer", formType, bearer, form("", "#"+slackstub.ChannelName, "hi", ""), ""},
		{"json bearer", jsonType, bearer, `{"channel":"` + slackstub.ChannelID + `","text":"hi","blocks":` + goodBlocks + `}`, ""},
		{"no token", formType, "", form("", slackstub.ChannelID, "hi", ""), "not_authed"},
		{"wrong token", formType, "", form("xoxb-wrong", slackstub.ChannelID, "hi", ""), "invalid_auth"},
		{"wrong bearer", jsonType, "Bearer xoxb-wrong", `{"channel":"` + slackstub.ChannelID + `","text":"hi"}`, "invalid_auth"},
		{"json token in body only", jsonType, "", `{"token":"` + slackstub.Token + `","channel":"` + slackstub.ChannelID + `","text":"hi"}`, "not_authed"},
		{"unknown channel", formType, bearer, form("", "C404", "hi", ""), "channel_not_found"},
		{"no text", formType, bearer, form("", slackstub.ChannelID, "", ""), "no_text"},
		{"bad blocks", formType, bearer, form("", slackstub.ChannelID, "hi", `[{"type":"header","text":{"type":"plain_text","text":""}}]`), "invalid_blocks"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := slackstub.New(t)
			status, _, body := post(t, s.APIURL()+"chat.postMessage", tt.ctype, tt.auth, tt.body)
			var resp struct {
				OK      bool   `json:"ok"`
				Error   string `json:"error"`
				Channel string `json:"channel"`
				TS      string `json:"ts"`
			}
			if err := json.Unmarshal([]byte(body), &resp); err != nil || status != 200 {
				t.Fatalf("status %d body %q: %v", status, body, err)
			}
			if resp.Error != tt.err || resp.OK != (tt.err == "") {
				t.Fatalf("got %+v, want error %q", resp, tt.err)
			}
			if tt.err == "" {
				m := s.Messages()
				if len(m) != 1 || resp.Channel != slackstub.ChannelID || resp.TS == "" || m[0].TS != resp.TS || m[0].Text != "hi" {
					t.Fatalf("response %+v, messages %+v", resp, m)
				}
			} else if len(s.Messages()) != 0 || len(s.Rejections()) != 1 || s.Rejections()[0].Error != tt.err {
				t.Fatalf("messages %d, rejections %+v", len(s.Messages()), s.Rejections())
			}
		})
	}
}

func TestFailNextAndRejectNext(t *testing.T) {
	t.Parallel()
	s := slackstub.New(t)
	s.FailNext(2, http.StatusTooManyRequests)
	for range 2 {
		status, h, _ := post(t, s.WebhookURL(), "application/json", "", `{"text":"x"}`)
		if status != 429 || h.Get("Retry-After") != "1" {
			t.Fatalf("got %d Retry-After %q", status, h.Get("Retry-After"))
		}
	}
	s.FailNext(1, http.StatusInternalServerError)
	if status, _, _ := post(t, s.APIURL()+"chat.postMessage", "application/json", "Bearer "+slackstub.Token, `{"channel":"C0WHALEWATCH","text":"x"}`); status != 500 {
		t.Fatalf("got %d, want 500", status)
	}
	s.RejectNext(1, "channel_not_found")
	if status, _, body := post(t, s.WebhookURL(), "application/json", "", `{"text":"x"}`); status != 404 || body != "channel_not_found" {
		t.Fatalf("got %d %q", status, body)
	}
	if status, _, body := post(t, s.WebhookURL(), "application/json", "", `{"text":"x"}`); status != 200 || body != "ok" {
		t.Fatalf("after the knobs: %d %q", status, body)
	}
	if s.Requests() != 5 || len(s.Messages()) != 1 || len(s.Rejections()) != 4 {
		t.Fatalf("requests %d, messages %d, rejections %d", s.Requests(), len(s.Messages()), len(s.Rejections()))
	}
}

func TestOptions(t *testing.T) {
	t.Parallel()
	s := slackstub.New(t, slackstub.WithToken("xoxb-other"), slackstub.WithChannel("C0SECOND", "second"))
	post := func(token, channel string) string {
		_, _, body := post(t, s.APIURL()+"chat.postMessage", "application/x-www-form-urlencoded", "",
			url.Values{"token": {token}, "channel": {channel}, "text": {"x"}}.Encode())
		return body
	}
	for _, ch := range []string{"C0SECOND", "second", "#second", slackstub.ChannelID} {
		if body := post("xoxb-other", ch); !strings.Contains(body, `"ok":true`) {
			t.Fatalf("channel %s: %s", ch, body)
		}
	}
	if body := post(slackstub.Token, "C0SECOND"); !strings.Contains(body, "invalid_auth") {
		t.Fatalf("default token still accepted: %s", body)
	}
}

func TestKnobs(t *testing.T) {
	t.Parallel()
	t.Run("delay accepts first, answers later", func(t *testing.T) {
		t.Parallel()
		s := slackstub.New(t)
		s.SetDelay(300 * time.Millisecond)
		start := time.Now()
		status, _, body := post(t, s.WebhookURL(), "application/json", "", `{"text":"x"}`)
		if status != 200 || body != "ok" || time.Since(start) < 300*time.Millisecond {
			t.Fatalf("%d %q after %v", status, body, time.Since(start))
		}
		if at := s.Messages()[0].At; at.Sub(start) > 200*time.Millisecond {
			t.Fatalf("accepted %v after the request", at.Sub(start))
		}
	})
	t.Run("fail for a while", func(t *testing.T) {
		t.Parallel()
		s := slackstub.New(t)
		s.FailFor(time.Hour, http.StatusBadGateway)
		if status, _, _ := post(t, s.WebhookURL(), "application/json", "", `{"text":"x"}`); status != 502 {
			t.Fatalf("status %d", status)
		}
		s.FailFor(0, 0)
		if status, _, _ := post(t, s.WebhookURL(), "application/json", "", `{"text":"x"}`); status != 200 {
			t.Fatalf("status %d", status)
		}
	})
	for _, ra := range []string{"2", "0.5", "Wed, 21 Oct 2015 07:28:00 GMT", ""} {
		t.Run("retry-after "+ra, func(t *testing.T) {
			t.Parallel()
			s := slackstub.New(t)
			s.SetRetryAfter(ra)
			s.FailNext(1, http.StatusTooManyRequests)
			status, h, _ := post(t, s.WebhookURL(), "application/json", "", `{"text":"x"}`)
			if status != 429 || h.Get("Retry-After") != ra || (ra == "" && h.Values("Retry-After") != nil) {
				t.Fatalf("%d Retry-After %q", status, h.Get("Retry-After"))
			}
		})
	}
	t.Run("lost answer", func(t *testing.T) {
		t.Parallel()
		s := slackstub.New(t)
		s.LoseNextAnswers(1)
		req, _ := http.NewRequest(http.MethodPost, s.WebhookURL(), strings.NewReader(`{"text":"x"}`))
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			t.Fatal("an answer came")
		}
		if len(s.Messages()) != 1 {
			t.Fatal("the message was not posted")
		}
	})
}

func TestUpdateAndAttachments(t *testing.T) {
	t.Parallel()
	s := slackstub.New(t)
	body := `{"channel":"` + slackstub.ChannelID + `","text":"v1","parse":"none","attachments":[{"color":"#E01E1E","blocks":` + goodBlocks + `}]}`
	status, _, answer := post(t, s.APIURL()+"chat.postMessage", "application/json", "Bearer "+slackstub.Token, body)
	var a struct {
		OK bool   `json:"ok"`
		TS string `json:"ts"`
	}
	if err := json.Unmarshal([]byte(answer), &a); status != 200 || err != nil || !a.OK {
		t.Fatalf("%d %s", status, answer)
	}
	m := s.Messages()[0]
	if m.Parse != "none" || len(m.Attachments) != 1 || m.Attachments[0].Color != "#E01E1E" || !m.Mentions("h1") {
		t.Fatalf("%+v", m)
	}
	upd := `{"channel":"` + slackstub.ChannelID + `","ts":"` + a.TS + `","text":"v2"}`
	if status, _, answer := post(t, s.APIURL()+"chat.update", "application/json", "Bearer "+slackstub.Token, upd); status != 200 || !strings.Contains(answer, `"ok":true`) {
		t.Fatalf("%d %s", status, answer)
	}
	if ms := s.Messages(); len(ms) != 1 || ms[0].Text != "v2" || ms[0].Updates != 1 {
		t.Fatalf("%+v", ms)
	}
	bad := `{"channel":"` + slackstub.ChannelID + `","ts":"1.2","text":"v3"}`
	if _, _, answer := post(t, s.APIURL()+"chat.update", "application/json", "Bearer "+slackstub.Token, bad); !strings.Contains(answer, "message_not_found") {
		t.Fatal(answer)
	}
	badBlocks := `{"text":"x","attachments":[{"blocks":[{"type":"banner"}]}]}`
	if status, _, answer := post(t, s.WebhookURL(), "application/json", "", badBlocks); status != 400 || answer != "invalid_blocks" {
		t.Fatalf("%d %s", status, answer)
	}
}
