// Command stubs runs whalewatch's test stand-ins as processes, so that the
// compose smoke test (testkit/composetest, make test-compose) can start them
// as containers in place of what cannot run here:
//
//	stubs es             Elasticsearch (testkit/esstub) on :9200, ELASTIC_PASSWORD for user elastic
//	stubs kibana         Kibana's /api/status on :5601
//	stubs slack          Slack (testkit/slackstub) on :8080
//	stubs socket-proxy   wollomatic/socket-proxy's allow-list arguments (-allow<METHOD>=regexp,
//	                     SP_ALLOW_<METHOD>, -proxysocketendpoint) in front of /var/run/docker.sock
//	stubs ready PORT     exit 0 when 127.0.0.1:PORT/_stub/ready answers (healthchecks)
//	healthcheck          (as argv[0]) the socket proxy's healthcheck, as its image has one
//	stubs true           exit 0
//
// Each stand-in also answers GET /_stub/ready and lists what it received:
// /_stub/docs (Elasticsearch), /_stub/messages (Slack). Test code only.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/whalewatch/whalewatch/testkit/esstub"
	"github.com/whalewatch/whalewatch/testkit/slackstub"
)

func main() {
	mode, args := filepath.Base(os.Args[0]), os.Args[1:]
	if mode != "healthcheck" {
		if len(args) == 0 {
			log.Fatal("usage: stubs es|kibana|slack|socket-proxy|ready PORT|true")
		}
		mode, args = args[0], args[1:]
	}
	var err error
	switch mode {
	case "es":
		err = serveES()
	case "kibana":
		err = serve(":5601", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, map[string]any{"status": map[string]any{"overall": map[string]string{"level": "available"}}})
		}))
	case "slack":
		err = serveSlack()
	case "socket-proxy":
		err = socketProxy(args)
	case "healthcheck":
		err = get("http://127.0.0.1:55555/health")
	case "ready":
		if len(args) != 1 {
			log.Fatal("usage: stubs ready PORT")
		}
		err = get("http://127.0.0.1:" + args[0] + "/_stub/ready")
	case "true":
	default:
		err = fmt.Errorf("unknown mode %q", mode)
	}
	if err != nil {
		log.Fatal(err)
	}
}

// processTB lets the stand-ins, written for tests, live in a process: they
// only need Helper, Cleanup and the failure methods.
type processTB struct{ testing.TB }

func (processTB) Helper()                   {}
func (processTB) Cleanup(func())            {}
func (processTB) Fatalf(f string, a ...any) { log.Fatalf(f, a...) }
func (processTB) Fatal(a ...any)            { log.Fatal(a...) }
func (processTB) Errorf(f string, a ...any) { log.Printf(f, a...) }
func (processTB) Logf(f string, a ...any)   { log.Printf(f, a...) }
func (processTB) Name() string              { return "stubs" }

func serveES() error {
	es := esstub.New(processTB{}, esstub.WithBasicAuth("elastic", os.Getenv("ELASTIC_PASSWORD")))
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_stub/docs", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, es.AllDocs()) })
	mux.Handle("/", es)
	return serve(":9200", mux)
}

func serveSlack() error {
	s := slackstub.New(processTB{})
	u, err := url.Parse(s.URL())
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_stub/messages", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, s.Messages()) })
	mux.Handle("/", httputil.NewSingleHostReverseProxy(u))
	return serve(":8080", mux)
}

// serve serves h on addr, with /_stub/ready.
func serve(addr string, h http.Handler) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_stub/ready", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ready\n")) })
	mux.Handle("/", h)
	log.Printf("listening on %s", addr)
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return srv.ListenAndServe()
}

// socketProxy does what the compose file asks of wollomatic/socket-proxy,
// which cannot be pulled here: requests whose method has an allow-list and
// whose path matches one of its expressions whole go to the engine, the
// others get 403.
func socketProxy(args []string) error {
	allow := map[string][]*regexp.Regexp{}
	add := func(method, expr string) error {
		re, err := regexp.Compile("^(?:" + expr + ")$")
		if err != nil {
			return fmt.Errorf("-allow%s: %w", method, err)
		}
		allow[method] = append(allow[method], re)
		return nil
	}
	endpoint := ""
	for _, a := range args {
		name, value, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		switch {
		case name == "proxysocketendpoint":
			endpoint = value
		case strings.HasPrefix(name, "allow") && name[5:] == strings.ToUpper(name[5:]) && len(name) > 5:
			if err := add(name[5:], value); err != nil {
				return err
			}
		}
	}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		if rest, ok := strings.CutPrefix(k, "SP_ALLOW_"); ok && v != "" {
			method, _, _ := strings.Cut(rest, "_")
			if err := add(method, v); err != nil {
				return err
			}
		}
	}
	if endpoint == "" {
		return fmt.Errorf("-proxysocketendpoint is required")
	}
	_ = os.Remove(endpoint)
	ln, err := net.Listen("unix", endpoint)
	if err != nil {
		return err
	}
	engine := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(&url.URL{Scheme: "http", Host: "docker"})
		},
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", "/var/run/docker.sock")
		}},
		FlushInterval: -1,
	}
	go func() {
		health := http.NewServeMux()
		health.HandleFunc("/health", func(http.ResponseWriter, *http.Request) {})
		log.Print(http.ListenAndServe("127.0.0.1:55555", health))
	}()
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, re := range allow[r.Method] {
			if re.MatchString(r.URL.Path) {
				engine.ServeHTTP(w, r)
				return
			}
		}
		log.Printf("refused %s %s", r.Method, r.URL.Path)
		http.Error(w, "forbidden by the socket proxy's allow-list", http.StatusForbidden)
	})}
	log.Printf("proxying %s for %d methods", endpoint, len(allow))
	return srv.Serve(ln)
}

func get(u string) error {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", u, resp.Status)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
