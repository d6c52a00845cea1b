package composetest

import (
	"context"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sort"
	"sync"
	"testing"
)

// Call is one Engine API request: method and path (with the API version
// prefix, as the proxy sees it; no query).
type Call struct{ Method, Path string }

// Recorder is a reverse proxy on a unix socket in front of the Docker
// engine's socket that remembers every request passing through it.
type Recorder struct {
	Socket string // DOCKER_HOST=unix://<Socket>

	mu    sync.Mutex
	calls map[Call]int
}

// NewRecorder serves a recording proxy of engineSocket on a socket in a
// temporary directory until the test ends.
func NewRecorder(tb testing.TB, engineSocket string) *Recorder {
	tb.Helper()
	r := &Recorder{Socket: tb.TempDir() + "/docker.sock", calls: map[Call]int{}}
	ln, err := net.Listen("unix", r.Socket)
	if err != nil {
		tb.Fatalf("recorder: %v", err)
	}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(&url.URL{Scheme: "http", Host: "docker"})
			pr.Out.Host = "docker"
		},
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", engineSocket)
		}},
		FlushInterval: -1, // the event stream and log follows
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.calls[Call{req.Method, req.URL.Path}]++
		r.mu.Unlock()
		proxy.ServeHTTP(w, req)
	})}
	go func() { _ = srv.Serve(ln) }()
	tb.Cleanup(func() { _ = srv.Close() })
	return r
}

// Calls returns the distinct calls seen so far, sorted.
func (r *Recorder) Calls() []Call {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Call, 0, len(r.calls))
	for c := range r.calls {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Path != out[j].Path {
			return out[i].Path < out[j].Path
		}
		return out[i].Method < out[j].Method
	})
	return out
}

// Saw reports whether a call matching method and the path expression was made.
func (r *Recorder) Saw(method string, path func(string) bool) bool {
	for _, c := range r.Calls() {
		if c.Method == method && path(c.Path) {
			return true
		}
	}
	return false
}
