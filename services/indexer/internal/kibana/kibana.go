// Package kibana installs whalewatch's Kibana saved objects (data views,
// saved searches, visualisations, a dashboard) through Kibana's saved
// objects import API:
//
//	POST <url>[/s/<space>]/api/saved_objects/_import?overwrite=true
//	kbn-xsrf: true
//	Content-Type: multipart/form-data; the NDJSON in the part "file"
//
// Kibana answers 200 with {"success": bool, "successCount": n, "errors":
// [{"id","type","title","error":{"type": ...}}]}: an import may fail object
// by object, which Import reports as an error naming each one.
package kibana

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	_ "embed"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// Objects are the saved objects, as NDJSON. deploy/kibana/whalewatch.ndjson
// is the same file for importing by hand (a test keeps them equal).
//
//go:embed whalewatch.ndjson
var Objects []byte

// Config is how to reach Kibana.
type Config struct {
	URL      string
	APIKey   string
	Username string
	Password string
	CACert   string // path to a PEM file
	Space    string // "" is the default space
	Timeout  time.Duration
}

// RegisterFlags registers the Kibana flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.URL, "kibana-url", "", "Kibana URL, e.g. http://127.0.0.1:5601 (empty: no saved objects are installed)")
	fs.StringVar(&c.APIKey, "kibana-api-key", "", "secret: Kibana (Elasticsearch) API key, base64 encoded; instead of username and password")
	fs.StringVar(&c.Username, "kibana-username", "", "Kibana user for basic authentication (e.g. elastic)")
	fs.StringVar(&c.Password, "kibana-password", "", "secret: password of kibana-username")
	fs.StringVar(&c.CACert, "kibana-ca-cert", "", "path to a PEM file of the CA(s) that signed Kibana's certificate (default: system roots)")
	fs.StringVar(&c.Space, "kibana-space", "", "Kibana space to install the saved objects into (empty: the default space)")
	fs.DurationVar(&c.Timeout, "kibana-timeout", 30*time.Second, "timeout of one Kibana request")
}

// Validate checks c. Its errors never include a secret.
func (c *Config) Validate() error {
	var errs []error
	if c.URL != "" {
		p, err := url.Parse(c.URL)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			errs = append(errs, errors.New("kibana-url: want http(s)://host:port"))
		}
	}
	if c.APIKey != "" && (c.Username != "" || c.Password != "") {
		errs = append(errs, errors.New("set kibana-api-key or kibana-username/-password, not both"))
	}
	if c.Password != "" && c.Username == "" {
		errs = append(errs, errors.New("kibana-password is set but kibana-username is not"))
	}
	if strings.ContainsAny(c.Space, "/?#%. ") {
		errs = append(errs, errors.New("kibana-space must be a space id (lowercase letters, digits, _ and -)"))
	}
	if c.Timeout <= 0 {
		errs = append(errs, errors.New("kibana-timeout must be positive"))
	}
	return errors.Join(errs...)
}

// Client talks to Kibana's HTTP API.
type Client struct {
	cfg  Config
	http *http.Client
}

// NewClient builds a client from cfg.
func NewClient(cfg Config) (*Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if cfg.CACert != "" {
		pem, err := os.ReadFile(cfg.CACert)
		if err != nil {
			return nil, fmt.Errorf("kibana-ca-cert: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("kibana-ca-cert %s: no PEM certificate in the file", cfg.CACert)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &Client{cfg: cfg, http: &http.Client{Transport: tr, Timeout: cfg.Timeout}}, nil
}

// ImportResult is Kibana's answer to an import.
type ImportResult struct {
	Success      bool          `json:"success"`
	SuccessCount int           `json:"successCount"`
	Errors       []ObjectError `json:"errors"`
}

// ObjectError is one object Kibana did not import.
type ObjectError struct {
	ID    string `json:"id"`
	Type  string `json:"type"`
	Title string `json:"title"`
	Error struct {
		Type       string `json:"type"` // conflict, missing_references, unsupported_type, unknown
		Message    string `json:"message"`
		References []struct {
			Type string `json:"type"`
			ID   string `json:"id"`
		} `json:"references"`
	} `json:"error"`
}

func (e ObjectError) String() string {
	s := e.Type + " " + e.ID + ": " + e.Error.Type
	if e.Error.Message != "" {
		s += " (" + e.Error.Message + ")"
	}
	for _, r := range e.Error.References {
		s += " missing " + r.Type + " " + r.ID
	}
	return s
}

// ErrObjects is returned (wrapped) when Kibana refused some objects: the
// objects are at fault, retrying does not help.
var ErrObjects = errors.New("kibana refused saved objects")

// Import imports ndjson (a file called name) with overwrite=true, so that a
// second run, or an upgrade, replaces the objects in place.
func (c *Client) Import(ctx context.Context, name string, ndjson []byte) (ImportResult, error) {
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	part, err := mw.CreateFormFile("file", name)
	if err != nil {
		return ImportResult{}, fmt.Errorf("kibana import: %w", err)
	}
	_, _ = part.Write(ndjson)
	if err := mw.Close(); err != nil {
		return ImportResult{}, fmt.Errorf("kibana import: %w", err)
	}
	u := strings.TrimRight(c.cfg.URL, "/")
	if c.cfg.Space != "" {
		u += "/s/" + c.cfg.Space
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u+"/api/saved_objects/_import?overwrite=true", &body)
	if err != nil {
		return ImportResult{}, fmt.Errorf("kibana import: %w", err)
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	req.Header.Set("kbn-xsrf", "true") // Kibana refuses API writes without it
	switch {
	case c.cfg.APIKey != "":
		req.Header.Set("Authorization", "ApiKey "+c.cfg.APIKey)
	case c.cfg.Username != "":
		req.SetBasicAuth(c.cfg.Username, c.cfg.Password)
	}
	res, err := c.http.Do(req)
	if err != nil {
		return ImportResult{}, fmt.Errorf("kibana import: %w", err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(res.Body, 4<<20))
	if res.StatusCode != http.StatusOK {
		var e struct {
			Message string `json:"message"`
		}
		_ = json.Unmarshal(b, &e)
		return ImportResult{}, fmt.Errorf("kibana import: %s: %s", res.Status, truncate(e.Message, 512))
	}
	var r ImportResult
	if err := json.Unmarshal(b, &r); err != nil {
		return ImportResult{}, fmt.Errorf("kibana import: answer: %w", err)
	}
	if !r.Success || len(r.Errors) > 0 {
		msgs := make([]string, len(r.Errors))
		for i, e := range r.Errors {
			msgs[i] = e.String()
		}
		return r, fmt.Errorf("%w: %d imported, %d refused: %s", ErrObjects, r.SuccessCount, len(r.Errors), truncate(strings.Join(msgs, "; "), 2048))
	}
	return r, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
