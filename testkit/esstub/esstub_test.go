package esstub

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

type response struct {
	status int
	header http.Header
	body   map[string]any
}

func do(t *testing.T, c *http.Client, method, url, contentType, body string, hdr ...string) response {
	t.Helper()
	if c == nil {
		c = http.DefaultClient
	}
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := response{status: res.StatusCode, header: res.Header}
	if len(b) > 0 {
		if err := json.Unmarshal(b, &out.body); err != nil {
			t.Fatalf("%s %s: response is not a JSON object: %v: %s", method, url, err, b)
		}
	}
	if got := res.Header.Get("X-Elastic-Product"); got != "Elasticsearch" {
		t.Fatalf("%s %s: X-Elastic-Product %q", method, url, got)
	}
	return out
}

const (
	ndjson    = "application/x-ndjson"
	component = `{"template":{"mappings":{"properties":{"@timestamp":{"type":"date"},"process":{"properties":{"pid":{"type":"long"},` +
		`"command_line":{"type":"wildcard","fields":{"text":{"type":"match_only_text"}}}}},"container":{"properties":{"labels":{"type":"flattened"}}}}}}}`
	indexTmpl = `{"index_patterns":["logs-app.*-*"],"data_stream":{},"priority":200,"composed_of":["app@mappings"]}`
)

// withTemplates returns a stub with an "app" data stream template installed.
func withTemplates(t *testing.T, opts ...Option) *Server {
	t.Helper()
	s := New(t, opts...)
	if r := do(t, nil, "PUT", s.URL+"/_component_template/app@mappings", "application/json", component); r.status != 200 {
		t.Fatalf("component template: %d %v", r.status, r.body)
	}
	if r := do(t, nil, "PUT", s.URL+"/_index_template/app", "application/json", indexTmpl); r.status != 200 {
		t.Fatalf("index template: %d %v", r.status, r.body)
	}
	return s
}

func TestInfo(t *testing.T) {
	t.Parallel()
	s := New(t)
	r := do(t, nil, "GET", s.URL+"/", "", "")
	if r.status != 200 || !strings.HasPrefix(r.body["version"].(map[string]any)["number"].(string), "8.") {
		t.Fatalf("GET /: %d %v", r.status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q", ct)
	}
	if r := do(t, nil, "HEAD", s.URL+"/", "", ""); r.status != 200 {
		t.Fatalf("HEAD /: %d", r.status)
	}
	if r := do(t, nil, "GET", s.URL+"/_nope", "", ""); r.status != 400 {
		t.Fatalf("unknown path: %d", r.status)
	}
}

func TestTemplates(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, path, body string
		want             int
		wantErr          string
	}{
		{"component ok", "/_component_template/c", component, 200, ""},
		{"component not json", "/_component_template/c", `{"template":`, 400, "x_content_parse_exception"},
		{"component unknown key", "/_component_template/c", `{"template":{},"mappings":{}}`, 400, "x_content_parse_exception"},
		{"component without template", "/_component_template/c", `{"version":1}`, 400, "x_content_parse_exception"},
		{"unknown field type", "/_component_template/c", `{"template":{"mappings":{"properties":{"a":{"type":"strng"}}}}}`, 400, "mapper_parsing_exception"},
		{"parameter the type does not take", "/_component_template/c", `{"template":{"mappings":{"properties":{"a":{"type":"long","ignore_above":10}}}}}`, 400, "mapper_parsing_exception"},
		{"bad multi-field", "/_component_template/c", `{"template":{"mappings":{"properties":{"a":{"type":"keyword","fields":{"t":{"type":"txt"}}}}}}}`, 400, "mapper_parsing_exception"},
		{"unknown root mapping parameter", "/_component_template/c", `{"template":{"mappings":{"propertes":{}}}}`, 400, "mapper_parsing_exception"},
		{"index template missing component", "/_index_template/i", `{"index_patterns":["x-*"],"composed_of":["nope"]}`, 400, "illegal_argument_exception"},
		{"index template without patterns", "/_index_template/i", `{"composed_of":[]}`, 400, "x_content_parse_exception"},
		{"same priority as logs", "/_index_template/i", `{"index_patterns":["logs-app.*-*"],"priority":100,"data_stream":{}}`, 400, "illegal_argument_exception"},
		{"above logs", "/_index_template/i", `{"index_patterns":["logs-app.*-*"],"priority":200,"data_stream":{}}`, 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := New(t)
			r := do(t, nil, "PUT", s.URL+tt.path, "application/json", tt.body)
			if r.status != tt.want {
				t.Fatalf("status %d, want %d: %v", r.status, tt.want, r.body)
			}
			if tt.wantErr != "" {
				if got := r.body["error"].(map[string]any)["type"]; got != tt.wantErr {
					t.Fatalf("error type %v, want %s", got, tt.wantErr)
				}
			}
		})
	}

	s := withTemplates(t)
	got := s.Templates()
	if _, ok := got.Component["app@mappings"]; !ok {
		t.Fatal("component template not stored")
	}
	if got.Index["app"].Seq <= got.Component["app@mappings"].Seq {
		t.Fatal("sequence numbers do not follow request order")
	}
	if r := do(t, nil, "GET", s.URL+"/_index_template/app", "", ""); r.status != 200 {
		t.Fatalf("GET index template: %d", r.status)
	}
}

func bulkItems(t *testing.T, r response) []map[string]any {
	t.Helper()
	if r.status != 200 {
		t.Fatalf("bulk: %d %v", r.status, r.body)
	}
	var out []map[string]any
	for _, it := range r.body["items"].([]any) {
		for _, v := range it.(map[string]any) {
			out = append(out, v.(map[string]any))
		}
	}
	return out
}

func status(item map[string]any) int { return int(item["status"].(float64)) }

func errType(item map[string]any) string {
	e, _ := item["error"].(map[string]any)
	s, _ := e["type"].(string)
	return s
}

func TestBulk(t *testing.T) {
	t.Parallel()
	s := withTemplates(t)
	body := `{"create":{"_index":"logs-app.web-default","_id":"a"}}
{"@timestamp":"2025-01-01T00:00:00Z","message":"one"}
{"create":{"_index":"logs-app.web-default","_id":"a"}}
{"@timestamp":"2025-01-01T00:00:00Z","message":"again"}
{"index":{"_index":"logs-app.web-default","_id":"b"}}
{"@timestamp":"2025-01-01T00:00:00Z"}
{"create":{"_index":"logs-app.web-default","_id":"c"}}
{"message":"no timestamp"}
{"create":{"_index":"logs-other-default","_id":"d"}}
{"@timestamp":"2025-01-01T00:00:00Z"}
{"index":{"_id":"e"}}
{"x":1}
{"index":{"_id":"e"}}
{"x":2}
{"create":{"_index":"Upper","_id":"f"}}
{}
`
	items := bulkItems(t, do(t, nil, "POST", s.URL+"/plain/_bulk", "application/vnd.elasticsearch+x-ndjson; compatible-with=8", body))
	want := []struct {
		status  int
		errType string
	}{
		{201, ""}, {409, "version_conflict_engine_exception"}, {400, "illegal_argument_exception"},
		{400, "document_parsing_exception"}, {201, ""}, {201, ""}, {200, ""}, {400, "invalid_index_name_exception"},
	}
	if len(items) != len(want) {
		t.Fatalf("%d items, want %d", len(items), len(want))
	}
	for i, w := range want {
		if status(items[i]) != w.status || errType(items[i]) != w.errType {
			t.Errorf("item %d: %v, want %d %s", i, items[i], w.status, w.errType)
		}
	}
	if idx := items[0]["_index"].(string); !strings.HasPrefix(idx, ".ds-logs-app.web-default-") {
		t.Errorf("data stream item answered _index %q, want its backing index", idx)
	}
	docs := s.Docs("logs-app.web-default")
	if len(docs) != 1 || docs[0].ID != "a" || !strings.Contains(string(docs[0].Source), `"one"`) {
		t.Fatalf("data stream docs: %+v", docs)
	}
	if got := s.DataStreams(); got["logs-app.web-default"].Template != "app" || got["logs-other-default"].Template != "logs" {
		t.Fatalf("data streams: %+v", got)
	}
	if d := s.Docs("plain"); len(d) != 1 || string(d[0].Source) != `{"x":2}` {
		t.Fatalf("plain index docs: %+v", d)
	}
	if n := len(s.AllDocs()); n != 4 {
		t.Fatalf("%d docs stored, want 4", n)
	}
	reqs := s.BulkRequests()
	if len(reqs) != 1 || reqs[0].Items != 8 || !reqs[0].Errors || reqs[0].Path != "/plain/_bulk" {
		t.Fatalf("bulk requests: %+v", reqs)
	}
}

func TestBulkMalformed(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, contentType, query, body string
		want                           int
	}{
		{"no trailing newline", ndjson, "", `{"create":{"_index":"i"}}` + "\n{}", 400},
		{"missing source", ndjson, "", `{"create":{"_index":"i"}}` + "\n", 400},
		{"two actions in one line", ndjson, "", `{"create":{"_index":"i"},"index":{}}` + "\n{}\n", 400},
		{"unknown action", ndjson, "", `{"upsert":{"_index":"i"}}` + "\n{}\n", 400},
		{"unknown metadata", ndjson, "", `{"create":{"_index":"i","_type":"doc"}}` + "\n{}\n", 400},
		{"action not json", ndjson, "", "create i\n{}\n", 400},
		{"no index", ndjson, "", `{"create":{"_id":"x"}}` + "\n{}\n", 400},
		{"empty", ndjson, "", "", 400},
		{"unknown parameter", ndjson, "?bogus=1", `{"create":{"_index":"i"}}` + "\n{}\n", 400},
		{"text/plain", "text/plain", "", `{"create":{"_index":"i"}}` + "\n{}\n", 406},
		{"compatible-with=9", "application/vnd.elasticsearch+x-ndjson;compatible-with=9", "", `{"create":{"_index":"i"}}` + "\n{}\n", 406},
		{"ok", ndjson, "?refresh=false", `{"create":{"_index":"i"}}` + "\n{}\n", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := New(t)
			r := do(t, nil, "POST", s.URL+"/_bulk"+tt.query, tt.contentType, tt.body)
			if r.status != tt.want {
				t.Fatalf("status %d, want %d: %v", r.status, tt.want, r.body)
			}
			if n := len(s.AllDocs()); (tt.want == 200) != (n == 1) {
				t.Fatalf("%d docs stored", n)
			}
		})
	}
}

func TestFailureKnobs(t *testing.T) {
	t.Parallel()
	s := withTemplates(t)
	doc := func(id string) string {
		return `{"create":{"_index":"logs-app.web-default","_id":"` + id + `"}}` + "\n" + `{"@timestamp":"2025-01-01T00:00:00Z"}` + "\n"
	}

	s.RejectNext(2, 429, "es_rejected_execution_exception")
	items := bulkItems(t, do(t, nil, "POST", s.URL+"/_bulk", ndjson, doc("1")+doc("2")+doc("3")))
	if status(items[0]) != 429 || status(items[1]) != 429 || status(items[2]) != 201 || errType(items[0]) != "es_rejected_execution_exception" {
		t.Fatalf("items: %v", items)
	}

	s.SetUnavailable(true)
	if r := do(t, nil, "POST", s.URL+"/_bulk", ndjson, doc("4")); r.status != 503 {
		t.Fatalf("unavailable: %d", r.status)
	}
	s.SetUnavailable(false)

	s.SetDown(true)
	res, err := http.Post(s.URL+"/_bulk", ndjson, strings.NewReader(doc("5")))
	if err == nil {
		res.Body.Close()
		t.Fatalf("down: got a response %d, want a connection error", res.StatusCode)
	}
	s.SetDown(false)

	items = bulkItems(t, do(t, nil, "POST", s.URL+"/_bulk", ndjson, doc("3")+doc("6")))
	if status(items[0]) != 409 || status(items[1]) != 201 {
		t.Fatalf("after recovery: %v", items)
	}
	if n := len(s.Docs("logs-app.web-default")); n != 2 {
		t.Fatalf("%d docs, want 2 (3 and 6; the others were rejected or never arrived)", n)
	}
}

func TestAuthAndTLS(t *testing.T) {
	t.Parallel()
	s := New(t, WithTLS(), WithBasicAuth("elastic", "changeme"), WithAPIKey("a2V5OnNlY3JldA=="))
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(s.CACertPEM()) {
		t.Fatal("CACertPEM is not a PEM certificate")
	}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	if r := do(t, c, "GET", s.URL+"/", "", ""); r.status != 401 {
		t.Fatalf("without credentials: %d", r.status)
	}
	if r := do(t, c, "GET", s.URL+"/", "", "", "Authorization", "ApiKey a2V5OnNlY3JldA=="); r.status != 200 {
		t.Fatalf("API key: %d", r.status)
	}
	req, _ := http.NewRequest("GET", s.URL+"/", nil)
	req.SetBasicAuth("elastic", "changeme")
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("basic auth: %d", res.StatusCode)
	}
}

func TestGlobMatch(t *testing.T) {
	t.Parallel()
	tests := []struct {
		pattern, s string
		want       bool
	}{
		{"logs-*-*", "logs-whalewatch.process-default", true},
		{"logs-whalewatch.*-*", "logs-whalewatch.process-default", true},
		{"logs-whalewatch.*-*", "logs-whalewatch-default", false},
		{"logs-*-*", "logs-x", false},
		{"*", "", true},
		{"abc", "abc", true},
		{"abc", "abcd", false},
		{"a*c", "abbbc", true},
	}
	for _, tt := range tests {
		if got := globMatch(tt.pattern, tt.s); got != tt.want {
			t.Errorf("globMatch(%q, %q) = %v", tt.pattern, tt.s, got)
		}
	}
}

func TestFastParseAction(t *testing.T) {
	t.Parallel()
	for _, line := range []string{
		`{"create":{"_index":"logs-a-b","_id":"0123"}}`,
		`{"create":{"_index":"logs-a-b","_id":"a\"b"}}`,
		`{"index":{"_index":"x","_id":"y"}}`,
		`{"create":{"_id":"y","_index":"x"}}`,
	} {
		var want map[string]fastMeta
		if err := json.Unmarshal([]byte(line), &want); err != nil {
			t.Fatal(err)
		}
		got, err := parseAction([]byte(line))
		if err != nil || !reflect.DeepEqual(want, got) {
			t.Errorf("%s: got %v, %v; want %v", line, got, err, want)
		}
	}
}
