// Package esstub is an in-process Elasticsearch stand-in for tests. It speaks
// the part of the REST wire protocol that a log shipper uses, the way
// Elasticsearch 8 speaks it, so that the real go-elasticsearch v8 client talks
// to it unchanged:
//
//   - every HTTP response carries X-Elastic-Product: Elasticsearch (the v8
//     client refuses a 2xx response without it) and a JSON content type;
//   - GET / and HEAD / answer the cluster info of an 8.x node;
//   - PUT /_component_template/{name} and PUT /_index_template/{name} validate
//     and store templates; an index template must name existing component
//     templates, and two templates of equal priority may not overlap;
//   - PUT /_ilm/policy/{name} validates and stores an ILM policy (phases and
//     actions by name); a data stream records the index.lifecycle.name its
//     template's settings resolve to;
//   - POST /_bulk and /{index}/_bulk parse NDJSON strictly and answer per-item
//     results shaped like Elasticsearch's: a target that matches an index
//     template with data_stream is a data stream (create only, @timestamp
//     required, _index answered as its backing index), a repeated _id in the
//     same target answers 409 version_conflict_engine_exception.
//
// Like a fresh Elasticsearch 8 node it starts with the built-in "logs" index
// template (logs-*-*, priority 100) unless WithoutStackTemplates is given.
//
// Failures are injected with SetDown (connections dropped), SetUnavailable
// (503 to everything), RejectNext and SetItemError (per-item rejections) and
// LoseNextResponses (stored, answer lost). What arrived is
// read back with Docs, AllDocs, BulkRequests, Templates and DataStreams. Every
// recorded request carries a sequence number so tests can check ordering.
package esstub

import (
	"bytes"
	"compress/gzip"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Version is the Elasticsearch version the stub claims to be.
const Version = "8.19.7"

// MaxContentLength is the default request body limit, Elasticsearch's
// http.max_content_length.
const MaxContentLength = 100 << 20

// Doc is one document the stub stored.
type Doc struct {
	Seq    int64  // order of arrival across the server
	Index  string // the target as named in the request: data stream or index
	ID     string
	Op     string // create or index
	Source json.RawMessage
}

// BulkRequest is one _bulk request the stub received.
type BulkRequest struct {
	Seq         int64
	Path        string
	Query       string
	ContentType string
	Items       int  // action lines parsed
	Status      int  // HTTP status answered
	Errors      bool // the "errors" flag answered
}

// Template is a stored component or index template.
type Template struct {
	Seq  int64
	Name string
	Body json.RawMessage
}

// Templates is a snapshot of the stored templates, by name.
type Templates struct {
	Component map[string]Template
	Index     map[string]Template
}

// DataStream is a data stream the stub created on first write.
type DataStream struct {
	Name         string
	Template     string // the index template that matched
	Lifecycle    string // index.lifecycle.name its settings resolved to
	BackingIndex string // answered as _index of its items
}

// Option configures a Server.
type Option func(*Server)

// WithBasicAuth makes the server require HTTP basic authentication.
func WithBasicAuth(user, password string) Option {
	return func(s *Server) {
		s.auth = append(s.auth, "Basic "+base64.StdEncoding.EncodeToString([]byte(user+":"+password)))
	}
}

// WithAPIKey makes the server require "Authorization: ApiKey <encoded>".
func WithAPIKey(encoded string) Option {
	return func(s *Server) { s.auth = append(s.auth, "ApiKey "+encoded) }
}

// WithTLS serves HTTPS with a self-signed certificate; CACertPEM returns it.
func WithTLS() Option { return func(s *Server) { s.tls = true } }

// WithoutStackTemplates starts with no templates, like a node with
// stack.templates.enabled: false.
func WithoutStackTemplates() Option { return func(s *Server) { s.noStack = true } }

// WithMaxContentLength sets the request body limit (413 above it).
func WithMaxContentLength(n int64) Option { return func(s *Server) { s.maxContent = n } }

// Server is a running stub. Its methods are safe for concurrent use.
type Server struct {
	// URL is the base URL, e.g. http://127.0.0.1:41234.
	URL string

	srv        *httptest.Server
	auth       []string
	tls        bool
	noStack    bool
	maxContent int64

	mu            sync.Mutex
	seq           int64
	down          bool
	unavailable   bool
	rejects       []rejection
	itemError     *rejection
	loseResponses int
	components    map[string]Template
	policies      map[string]Template
	indexTmpls    map[string]indexTemplate
	streams       map[string]*DataStream
	targets       map[string]*target
	docs          []Doc
	bulks         []BulkRequest
}

type rejection struct {
	status  int
	errType string
}

// indexTemplate is the part of an index template the stub acts on.
type indexTemplate struct {
	Template
	patterns   []string
	priority   int64
	dataStream bool
}

// target is a data stream or index holding documents.
type target struct {
	ids  map[string]int // _id -> version
	docs []Doc
}

// New starts a stub and closes it when the test ends.
func New(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	s := &Server{
		maxContent: MaxContentLength,
		components: map[string]Template{},
		policies:   map[string]Template{},
		indexTmpls: map[string]indexTemplate{},
		streams:    map[string]*DataStream{},
		targets:    map[string]*target{},
	}
	for _, o := range opts {
		o(s)
	}
	if !s.noStack {
		s.installStackTemplates()
	}
	if s.tls {
		s.srv = httptest.NewTLSServer(s)
	} else {
		s.srv = httptest.NewServer(s)
	}
	s.URL = s.srv.URL
	tb.Cleanup(s.srv.Close)
	return s
}

// CACertPEM is the PEM of the certificate a WithTLS server presents (valid for
// 127.0.0.1); nil without TLS.
func (s *Server) CACertPEM() []byte {
	if !s.tls {
		return nil
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.srv.Certificate().Raw})
}

// SetDown makes every request fail at the connection level (closed without a
// response, as when Elasticsearch is stopped) while down is true.
func (s *Server) SetDown(down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down = down
}

// SetUnavailable makes every request answer 503 while on is true.
func (s *Server) SetUnavailable(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unavailable = on
}

// RejectNext makes the next n bulk items, in any request, fail with status
// and an error of type errType (e.g. 400 "mapper_parsing_exception", 429
// "es_rejected_execution_exception"). Rejected items are not stored.
func (s *Server) RejectNext(n int, status int, errType string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.rejects = append(s.rejects, rejection{status: status, errType: errType})
	}
}

// SetItemError makes every bulk item fail with status and an error of type
// errType (e.g. 403 "cluster_block_exception" for a write block) until it is
// called with status 0.
func (s *Server) SetItemError(status int, errType string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.itemError = nil
	if status != 0 {
		s.itemError = &rejection{status: status, errType: errType}
	}
}

// LoseNextResponses makes the next n _bulk requests be applied, then their
// connection closed without a response: the documents are stored but the
// client does not know it (a lost acknowledgement). A resend answers 409.
func (s *Server) LoseNextResponses(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loseResponses += n
}

// Docs returns the documents stored in one data stream or index, in order.
func (s *Server) Docs(index string) []Doc {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.targets[index]; t != nil {
		return slices.Clone(t.docs)
	}
	return nil
}

// AllDocs returns every stored document, in order of arrival.
func (s *Server) AllDocs() []Doc {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.docs)
}

// DocCount is len(AllDocs()) without the copy.
func (s *Server) DocCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.docs)
}

// BulkRequests returns the _bulk requests received, in order.
func (s *Server) BulkRequests() []BulkRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.bulks)
}

// Templates returns the stored templates.
func (s *Server) Templates() Templates {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := Templates{Component: maps.Clone(s.components), Index: map[string]Template{}}
	for k, v := range s.indexTmpls {
		t.Index[k] = v.Template
	}
	return t
}

// Policies returns the stored ILM policies, by name.
func (s *Server) Policies() map[string]Template {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.policies)
}

// DataStreams returns the data streams created so far, by name.
func (s *Server) DataStreams() map[string]DataStream {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]DataStream, len(s.streams))
	for k, v := range s.streams {
		out[k] = *v
	}
	return out
}

// Reset forgets every document, data stream and bulk request (templates stay).
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.streams = map[string]*DataStream{}
	s.targets = map[string]*target{}
	s.docs = nil
	s.bulks = nil
}

// ServeHTTP implements the REST API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	down, unavailable := s.down, s.unavailable
	s.mu.Unlock()
	if down {
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				_ = conn.Close()
				return
			}
		}
		panic(http.ErrAbortHandler) // closes the connection without a response
	}
	h := w.Header()
	h.Set("X-Elastic-Product", "Elasticsearch")
	if strings.Contains(r.Header.Get("Accept"), "compatible-with=") {
		h.Set("Content-Type", "application/vnd.elasticsearch+json;compatible-with=8")
	} else {
		h.Set("Content-Type", "application/json")
	}
	if unavailable {
		writeError(w, http.StatusServiceUnavailable, "master_not_discovered_exception", "esstub: unavailable")
		return
	}
	if !s.authorized(r) {
		h.Set("WWW-Authenticate", `Basic realm="security", charset="UTF-8"`)
		h.Add("WWW-Authenticate", "ApiKey")
		writeError(w, http.StatusUnauthorized, "security_exception",
			"missing authentication credentials for REST request ["+r.URL.Path+"]")
		return
	}

	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	switch {
	case r.URL.Path == "/":
		s.info(w, r)
	case len(parts) == 1 && parts[0] == "_bulk":
		s.bulk(w, r, "")
	case len(parts) == 2 && parts[1] == "_bulk" && !strings.HasPrefix(parts[0], "_"):
		s.bulk(w, r, parts[0])
	case len(parts) == 2 && parts[0] == "_component_template":
		s.componentTemplate(w, r, parts[1])
	case len(parts) == 2 && parts[0] == "_index_template":
		s.indexTemplate(w, r, parts[1])
	case len(parts) == 3 && parts[0] == "_ilm" && parts[1] == "policy":
		s.ilmPolicy(w, r, parts[2])
	default:
		writeJSON(w, http.StatusBadRequest, map[string]any{
			"error":  "no handler found for uri [" + r.URL.Path + "] and method [" + r.Method + "]",
			"status": http.StatusBadRequest,
		})
	}
}

func (s *Server) authorized(r *http.Request) bool {
	if len(s.auth) == 0 {
		return true
	}
	// Elasticsearch reads the scheme case-insensitively: the Go client sends "APIKey".
	gotScheme, got, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	for _, a := range s.auth {
		scheme, want, _ := strings.Cut(a, " ")
		if strings.EqualFold(gotScheme, scheme) && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1 {
			return true
		}
	}
	return false
}

func (s *Server) info(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodHead:
		w.WriteHeader(http.StatusOK)
	case http.MethodGet:
		writeJSON(w, http.StatusOK, map[string]any{
			"name":         "esstub",
			"cluster_name": "esstub",
			"cluster_uuid": "ZXNzdHViLWNsdXN0ZXI",
			"version": map[string]any{
				"number":                              Version,
				"build_flavor":                        "default",
				"build_type":                          "docker",
				"build_hash":                          "0000000000000000000000000000000000000000",
				"build_date":                          "2025-01-01T00:00:00.000000000Z",
				"build_snapshot":                      false,
				"lucene_version":                      "9.12.2",
				"minimum_wire_compatibility_version":  "7.17.0",
				"minimum_index_compatibility_version": "7.0.0",
			},
			"tagline": "You Know, for Search",
		})
	default:
		methodNotAllowed(w, r, "GET, HEAD")
	}
}

// readBody reads a request body within the content limit, gunzipping it when
// the client compressed it.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	var body io.Reader = http.MaxBytesReader(w, r.Body, s.maxContent)
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(body)
		if err != nil {
			writeError(w, http.StatusBadRequest, "parse_exception", "request body is not valid gzip: "+err.Error())
			return nil, false
		}
		body = io.LimitReader(zr, s.maxContent+1)
	}
	b, err := io.ReadAll(body)
	if err != nil || int64(len(b)) > s.maxContent {
		writeJSON(w, http.StatusRequestEntityTooLarge, map[string]any{
			"error":  "request body is larger than the limit of [" + strconv.FormatInt(s.maxContent, 10) + "] bytes",
			"status": http.StatusRequestEntityTooLarge,
		})
		return nil, false
	}
	return b, true
}

// checkContentType answers 406 for a body type Elasticsearch does not take.
func checkContentType(w http.ResponseWriter, r *http.Request, allowed ...string) (string, bool) {
	ct := r.Header.Get("Content-Type")
	mt, params, err := mime.ParseMediaType(ct)
	if err == nil && slices.Contains(allowed, mt) {
		if v, ok := params["compatible-with"]; !ok || v == "7" || v == "8" {
			return ct, true
		}
	}
	writeJSON(w, http.StatusNotAcceptable, map[string]any{
		"error":  "Content-Type header [" + ct + "] is not supported",
		"status": http.StatusNotAcceptable,
	})
	return ct, false
}

func methodNotAllowed(w http.ResponseWriter, r *http.Request, allow string) {
	w.Header().Set("Allow", allow)
	writeJSON(w, http.StatusMethodNotAllowed, map[string]any{
		"error":  "Incorrect HTTP method for uri [" + r.URL.Path + "] and method [" + r.Method + "], allowed: [" + allow + "]",
		"status": http.StatusMethodNotAllowed,
	})
}

func (s *Server) nextSeq() int64 {
	s.seq++
	return s.seq
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only stub-built values are encoded
	}
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// errorBody is Elasticsearch's error object.
func errorBody(errType, reason string) map[string]any {
	return map[string]any{"type": errType, "reason": reason}
}

// writeError writes Elasticsearch's error response shape.
func writeError(w http.ResponseWriter, status int, errType, reason string) {
	e := errorBody(errType, reason)
	e["root_cause"] = []any{errorBody(errType, reason)}
	writeJSON(w, status, map[string]any{"error": e, "status": status})
}

// globMatch matches Elasticsearch's simple wildcard patterns (only '*').
func globMatch(pattern, s string) bool {
	for {
		i := strings.IndexByte(pattern, '*')
		if i < 0 {
			return pattern == s
		}
		if !strings.HasPrefix(s, pattern[:i]) {
			return false
		}
		s, pattern = s[i:], pattern[i+1:]
		if pattern == "" {
			return true
		}
		for j := 0; j <= len(s); j++ {
			if globMatch(pattern, s[j:]) {
				return true
			}
		}
		return false
	}
}

// backingIndex is the name of a data stream's first backing index.
func backingIndex(stream string, created time.Time) string {
	return ".ds-" + stream + "-" + created.UTC().Format("2006.01.02") + "-000001"
}

// decodeObject decodes b as one JSON object, rejecting trailing data.
func decodeObject(b []byte) (map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	var m map[string]json.RawMessage
	if err := dec.Decode(&m); err != nil {
		return nil, err
	}
	if m == nil {
		return nil, fmt.Errorf("expected an object, got null")
	}
	if dec.More() {
		return nil, fmt.Errorf("trailing data after the object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("trailing data after the object")
	}
	return m, nil
}
