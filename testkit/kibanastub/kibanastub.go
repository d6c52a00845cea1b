// Package kibanastub is an in-process Kibana stand-in for tests. It speaks
// the saved objects import API the way Kibana 8 does:
//
//   - POST [/s/{space}]/api/saved_objects/_import takes multipart/form-data
//     with the NDJSON in the part "file" (the file name must end in .ndjson);
//     it requires the kbn-xsrf header, takes the query parameters overwrite,
//     createNewCopies and compatibilityMode (not overwrite with
//     createNewCopies) and answers 200 with success, successCount,
//     successResults and per-object errors: unsupported_type, conflict (the
//     object exists and overwrite is not true), missing_references (a
//     reference to an object neither imported nor stored);
//   - every object must have type, id and attributes;
//   - GET /api/status answers the overall level;
//   - errors are Kibana's {"statusCode","error","message"}.
//
// SetUnavailable answers 503 "Kibana server is not ready yet", as Kibana does
// while it starts. What was imported is read back with Objects and Imports.
package kibanastub

import (
	"bufio"
	"bytes"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
)

// Types are the saved object types the stub knows.
var Types = []string{"index-pattern", "search", "visualization", "dashboard", "lens", "config", "tag", "query"}

// Object is a stored saved object.
type Object struct {
	Type       string          `json:"type"`
	ID         string          `json:"id"`
	Attributes json.RawMessage `json:"attributes"`
	References []Reference     `json:"references"`
	Space      string          `json:"-"`
}

// Reference is a saved object reference.
type Reference struct {
	Name string `json:"name"`
	Type string `json:"type"`
	ID   string `json:"id"`
}

// Import is one import request the stub answered.
type Import struct {
	Space     string
	Overwrite bool
	Filename  string
	Objects   int
	Errors    int
	Status    int
}

// Server is a running stub.
type Server struct {
	// URL is the base URL.
	URL string

	auth        string
	mu          sync.Mutex
	unavailable bool
	requests    int
	objects     map[string]Object // space/type/id
	imports     []Import
}

// Option configures a Server.
type Option func(*Server)

// WithBasicAuth requires HTTP basic authentication.
func WithBasicAuth(user, password string) Option {
	return func(s *Server) { s.auth = "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password)) }
}

// New starts a stub and closes it when the test ends.
func New(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	s := &Server{objects: map[string]Object{}}
	for _, o := range opts {
		o(s)
	}
	srv := httptest.NewServer(s)
	s.URL = srv.URL
	tb.Cleanup(srv.Close)
	return s
}

// SetUnavailable makes every request answer 503 while on.
func (s *Server) SetUnavailable(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unavailable = on
}

// Objects returns the stored objects of a space ("" is the default), by
// "type/id".
func (s *Server) Objects(space string) map[string]Object {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]Object{}
	for k, o := range s.objects {
		if o.Space == space {
			out[strings.TrimPrefix(k, space+"/")] = o
		}
	}
	return out
}

// Requests is the number of requests received, answered or not.
func (s *Server) Requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests
}

// Imports returns the import requests, in order.
func (s *Server) Imports() []Import {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.imports)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]any{"statusCode": status, "error": http.StatusText(status), "message": msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// ServeHTTP implements the API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	unavailable := s.unavailable
	s.requests++
	s.mu.Unlock()
	if unavailable {
		writeError(w, http.StatusServiceUnavailable, "Kibana server is not ready yet")
		return
	}
	if s.auth != "" && subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte(s.auth)) != 1 {
		writeError(w, http.StatusUnauthorized, "[security_exception]: missing authentication credentials for REST request")
		return
	}
	path, space := r.URL.Path, ""
	if rest, ok := strings.CutPrefix(path, "/s/"); ok {
		space, path, _ = strings.Cut(rest, "/")
		path = "/" + path
	}
	switch {
	case path == "/api/status" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, map[string]any{"status": map[string]any{"overall": map[string]any{"level": "available"}}})
	case path == "/api/saved_objects/_import" && r.Method == http.MethodPost:
		s.importObjects(w, r, space)
	default:
		writeError(w, http.StatusNotFound, "Not Found")
	}
}

func (s *Server) importObjects(w http.ResponseWriter, r *http.Request, space string) {
	rec := Import{Space: space}
	fail := func(status int, msg string) {
		rec.Status = status
		s.mu.Lock()
		s.imports = append(s.imports, rec)
		s.mu.Unlock()
		writeError(w, status, msg)
	}
	if r.Header.Get("kbn-xsrf") == "" {
		fail(http.StatusBadRequest, "Request must contain a kbn-xsrf header.")
		return
	}
	q := r.URL.Query()
	for k := range q {
		if !slices.Contains([]string{"overwrite", "createNewCopies", "compatibilityMode"}, k) {
			fail(http.StatusBadRequest, "[request query."+k+"]: definition for this key is missing")
			return
		}
	}
	rec.Overwrite = q.Get("overwrite") == "true"
	if rec.Overwrite && q.Get("createNewCopies") == "true" {
		fail(http.StatusBadRequest, "[request query]: cannot use [overwrite] with [createNewCopies]")
		return
	}
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/form-data" {
		fail(http.StatusUnsupportedMediaType, "Unsupported Media Type")
		return
	}
	mr, err := multipartReader(r.Body, params["boundary"])
	if err != nil {
		fail(http.StatusBadRequest, err.Error())
		return
	}
	var file []byte
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			fail(http.StatusBadRequest, "invalid multipart body: "+err.Error())
			return
		}
		if p.FormName() == "file" {
			rec.Filename = p.FileName()
			file, _ = io.ReadAll(io.LimitReader(p, 32<<20))
		}
	}
	if file == nil {
		fail(http.StatusBadRequest, "[request body.file]: expected value of type [Stream] but got [undefined]")
		return
	}
	if !strings.HasSuffix(rec.Filename, ".ndjson") {
		fail(http.StatusBadRequest, "Invalid file extension "+rec.Filename[strings.LastIndexByte(rec.Filename, '.')+1:])
		return
	}
	var objs []Object
	sc := bufio.NewScanner(bytes.NewReader(file))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var o Object
		if err := json.Unmarshal(line, &o); err != nil {
			fail(http.StatusBadRequest, "Unexpected token in JSON: "+err.Error())
			return
		}
		if o.Type == "" || o.ID == "" || len(o.Attributes) == 0 {
			fail(http.StatusBadRequest, "saved object is missing type, id or attributes")
			return
		}
		o.Space = space
		objs = append(objs, o)
	}
	rec.Objects = len(objs)

	s.mu.Lock()
	defer s.mu.Unlock()
	inFile := map[string]bool{}
	for _, o := range objs {
		inFile[o.Type+"/"+o.ID] = true
	}
	var errs, results []map[string]any
	for _, o := range objs {
		title := ""
		var attrs struct {
			Title string `json:"title"`
		}
		_ = json.Unmarshal(o.Attributes, &attrs)
		title = attrs.Title
		objErr := func(e map[string]any) {
			errs = append(errs, map[string]any{"id": o.ID, "type": o.Type, "title": title, "meta": map[string]any{"title": title}, "error": e})
		}
		key := space + "/" + o.Type + "/" + o.ID
		if !slices.Contains(Types, o.Type) {
			objErr(map[string]any{"type": "unsupported_type"})
			continue
		}
		var missing []map[string]any
		for _, ref := range o.References {
			if !inFile[ref.Type+"/"+ref.ID] {
				if _, ok := s.objects[space+"/"+ref.Type+"/"+ref.ID]; !ok {
					missing = append(missing, map[string]any{"type": ref.Type, "id": ref.ID})
				}
			}
		}
		if len(missing) > 0 {
			objErr(map[string]any{"type": "missing_references", "references": missing})
			continue
		}
		_, exists := s.objects[key]
		if exists && !rec.Overwrite {
			objErr(map[string]any{"type": "conflict"})
			continue
		}
		s.objects[key] = o
		res := map[string]any{"type": o.Type, "id": o.ID, "meta": map[string]any{"title": title}}
		if exists {
			res["overwrite"] = true
		}
		results = append(results, res)
	}
	rec.Errors = len(errs)
	rec.Status = http.StatusOK
	s.imports = append(s.imports, rec)
	answer := map[string]any{"success": len(errs) == 0, "successCount": len(results), "successResults": results}
	if len(errs) > 0 {
		answer["errors"] = errs
	}
	writeJSON(w, http.StatusOK, answer)
}

func multipartReader(body io.Reader, boundary string) (*multipart.Reader, error) {
	if boundary == "" {
		return nil, errors.New("multipart body without a boundary")
	}
	return multipart.NewReader(body, boundary), nil
}
