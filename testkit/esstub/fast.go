package esstub

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// Fast is a stand-in that answers at once, for throughput benchmarks: it
// frames _bulk bodies (gzip or not), reads only the action lines, counts
// each _id once and answers 201 (409 for an _id it has seen). Every other
// request is answered 200 {"acknowledged":true}. It stores no document, so
// the cost measured is the client's.
type Fast struct {
	// URL is the base URL, e.g. http://127.0.0.1:41234.
	URL string

	mu       sync.Mutex
	ids      map[string]struct{}
	dups     int
	requests int
	gzipped  int
}

// NewFast starts a Fast stand-in and closes it when the test ends.
func NewFast(tb testing.TB) *Fast {
	tb.Helper()
	f := &Fast{ids: map[string]struct{}{}}
	srv := httptest.NewServer(f)
	f.URL = srv.URL
	tb.Cleanup(srv.Close)
	return f
}

// Created is the number of distinct _ids stored.
func (f *Fast) Created() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.ids)
}

// Duplicates is the number of items answered 409.
func (f *Fast) Duplicates() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dups
}

// Requests is the number of _bulk requests, and how many were gzipped.
func (f *Fast) Requests() (total, gzipped int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests, f.gzipped
}

// ServeHTTP implements the stand-in.
func (f *Fast) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Elastic-Product", "Elasticsearch")
	w.Header().Set("Content-Type", "application/json")
	switch {
	case r.URL.Path == "/" && r.Method == http.MethodHead:
		return
	case r.URL.Path == "/":
		_, _ = io.WriteString(w, `{"name":"esstub-fast","version":{"number":"`+Version+`"},"tagline":"You Know, for Search"}`)
		return
	case !strings.HasSuffix(r.URL.Path, "/_bulk"):
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, `{"acknowledged":true}`)
		return
	}
	var body io.Reader = r.Body
	gz := r.Header.Get("Content-Encoding") == "gzip"
	if gz {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			writeError(w, http.StatusBadRequest, "parse_exception", err.Error())
			return
		}
		body = zr
	}
	b, err := io.ReadAll(body)
	if err != nil || len(b) == 0 || b[len(b)-1] != '\n' {
		writeError(w, http.StatusBadRequest, "parse_exception", "bad bulk body")
		return
	}
	var out bytes.Buffer
	failed := false
	f.mu.Lock()
	f.requests++
	if gz {
		f.gzipped++
	}
	n := 0
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		action := b[:i]
		b = b[i+1:]
		if j := bytes.IndexByte(b, '\n'); j >= 0 { // the source line
			b = b[j+1:]
		}
		a, err := parseAction(action)
		if err != nil {
			f.mu.Unlock()
			writeError(w, http.StatusBadRequest, "x_content_parse_exception", err.Error())
			return
		}
		for op, m := range a {
			status := http.StatusCreated
			if _, seen := f.ids[m.ID]; seen {
				status = http.StatusConflict
				f.dups++
				failed = true
			}
			f.ids[m.ID] = struct{}{}
			if n > 0 {
				out.WriteByte(',')
			}
			n++
			out.WriteString(`{"` + op + `":{"_index":` + strconv.Quote(m.Index) + `,"_id":` + strconv.Quote(m.ID) + `,"status":` + strconv.Itoa(status))
			if status == http.StatusConflict {
				out.WriteString(`,"error":{"type":"version_conflict_engine_exception","reason":"document already exists"}`)
			}
			out.WriteString(`}}`)
		}
	}
	f.mu.Unlock()
	_, _ = io.WriteString(w, `{"took":0,"errors":`+strconv.FormatBool(failed)+`,"items":[`)
	_, _ = w.Write(out.Bytes())
	_, _ = io.WriteString(w, `]}`)
}

type fastMeta struct {
	Index string `json:"_index"`
	ID    string `json:"_id"`
}

// parseAction reads an action line; the common shape written by a client,
// {"create":{"_index":"...","_id":"..."}} without escapes, is read without
// decoding, anything else with encoding/json.
func parseAction(line []byte) (map[string]fastMeta, error) {
	const pre, mid, post = `{"create":{"_index":"`, `","_id":"`, `"}}`
	if bytes.HasPrefix(line, []byte(pre)) && bytes.HasSuffix(line, []byte(post)) && bytes.IndexByte(line, '\\') < 0 {
		rest := line[len(pre) : len(line)-len(post)]
		if i := bytes.Index(rest, []byte(mid)); i >= 0 && bytes.Count(rest, []byte{'"'}) == 2 {
			return map[string]fastMeta{"create": {Index: string(rest[:i]), ID: string(rest[i+len(mid):])}}, nil
		}
	}
	var a map[string]fastMeta
	err := json.Unmarshal(line, &a)
	return a, err
}
