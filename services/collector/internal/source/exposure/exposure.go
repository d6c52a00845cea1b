// Package exposure is the host source that tells whether the Docker Engine
// API is open over TCP.
package exposure

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/system"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/poll"
	"github.com/whalewatch/whalewatch/services/collector/internal/source"
)

// Config configures the exposure check.
type Config struct {
	// Interval between two checks; 0 disables the check.
	Interval time.Duration
	// ProbePorts are the ports probed on 127.0.0.1, comma-separated.
	ProbePorts string
}

// RegisterFlags registers the exposure flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.DurationVar(&c.Interval, "exposure-interval", 5*time.Minute, "how often the Docker Engine API's TCP exposure is checked (0 disables)")
	fs.StringVar(&c.ProbePorts, "exposure-probe-ports", "2375,2376", "comma-separated ports probed on 127.0.0.1 (only) for an Engine API answering without TLS")
}

// Validate checks c.
func (c *Config) Validate() error {
	var errs []error
	if c.Interval != 0 && c.Interval < 100*time.Millisecond {
		errs = append(errs, errors.New("exposure-interval must be 0 (disabled) or at least 100ms"))
	}
	if _, err := parsePorts(c.ProbePorts); err != nil {
		errs = append(errs, fmt.Errorf("exposure-probe-ports: %w", err))
	}
	return errors.Join(errs...)
}

// Ports is ProbePorts parsed (validated before).
func (c *Config) Ports() []int {
	ports, _ := parsePorts(c.ProbePorts)
	return ports
}

func parsePorts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := strconv.Atoi(f)
		if err != nil || p < 1 || p > 65535 {
			return nil, fmt.Errorf("%q is not a port", f)
		}
		out = append(out, p)
	}
	return out, nil
}

// InfoAPI is the engine call that reveals the engine's own listeners.
type InfoAPI interface {
	Info(ctx context.Context) (system.Info, error)
}

// Checker tells whether the Docker Engine API is open over TCP, at
// start and every interval, as host-scoped config telemetry
// (whalewatch.telemetry.<host>._host.config, whalewatch.docker_api), one
// event per address it learnt about:
//
//   - the engine the collector itself uses, when DOCKER_HOST / -docker-host is
//     tcp:// (a socket proxy's address, say): with TLS configured, reported as
//     TLS; otherwise probed like the loopback ports below (the collector
//     talks to that address anyway) and reported as what the probe found, so
//     an endpoint that requires TLS or does not answer is no alarm;
//   - the engine's own listeners, from the warnings of GET /info ("API is
//     accessible on http://0.0.0.0:2375 without encryption", or on https://
//     without TLS client verification, tagged docker-api-no-client-verify);
//   - a probe of probePorts on 127.0.0.1 ONLY (never another address): GET
//     /version over plain HTTP with a short timeout. An Engine API answer is
//     reachable without TLS; "HTTP request to an HTTPS server" is a TLS
//     listener; nothing listening is reported as not reachable.
//
// When the collector runs in a container, 127.0.0.1 is its own loopback:
// the probe then sees the host's listeners only with --network host; the
// engine's warnings cover the rest.
type Checker struct {
	host       string
	interval   time.Duration
	ports      []int
	dockerHost string
	info       InfoAPI // nil: no warnings to read
	log        *slog.Logger
	now        func() time.Time
}

// probeHost is the only address ever probed.
const probeHost = "127.0.0.1"

const probeTimeout = 2 * time.Second

// New returns the check of cfg. dockerHost is the collector's -docker-host;
// info may be nil (an engine without /info: no warnings to read).
func New(cfg Config, dockerHost, host string, info InfoAPI, log *slog.Logger) *Checker {
	return &Checker{host: host, interval: cfg.Interval, ports: cfg.Ports(), dockerHost: dockerHost, info: info, log: log, now: time.Now}
}

// Run checks at once, then every interval, until ctx ends.
func (x *Checker) Run(ctx context.Context, emit source.Emit) error {
	return poll.Loop{What: "exposure check", Interval: x.interval, Log: x.log}.Run(ctx, func(ctx context.Context) error {
		for _, e := range x.check(ctx) {
			if ctx.Err() != nil {
				return nil
			}
			emit(e)
		}
		return nil
	})
}

// finding is one address and what is known of it.
type finding struct {
	api    event.DockerAPI
	source string // docker-host, engine-info, probe
	note   string
	tags   []string
}

func (x *Checker) check(ctx context.Context) []*event.Event {
	var found []finding
	if addr, tls, ok := configuredEndpoint(x.dockerHost); ok {
		f := finding{api: event.DockerAPI{Address: addr, TLS: true}, source: "docker-host",
			note: "the collector reaches the Engine API over TCP with TLS"}
		if !tls {
			f = probe(ctx, addr)
			f.source, f.note = "docker-host", "the collector's DOCKER_HOST: "+f.note
		}
		found = append(found, f)
	}
	if x.info != nil {
		ictx, cancel := context.WithTimeout(ctx, source.CallTimeout)
		info, err := x.info.Info(ictx)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				x.log.Debug("docker info failed, engine listeners unknown", "err", err)
			}
		} else {
			found = append(found, warningExposure(info.Warnings)...)
		}
	}
	for _, port := range x.ports {
		found = append(found, probe(ctx, net.JoinHostPort(probeHost, strconv.Itoa(port))))
	}
	now := x.now()
	out := make([]*event.Event, 0, len(found))
	for _, f := range found {
		out = append(out, exposureEvent(x.host, f, now))
	}
	return out
}

// configuredEndpoint is the address of the engine the collector talks to,
// if over TCP, and whether the client is configured for TLS.
func configuredEndpoint(dockerHost string) (addr string, tls, ok bool) {
	if dockerHost == "" {
		dockerHost = os.Getenv("DOCKER_HOST")
	}
	u, err := url.Parse(dockerHost)
	if err != nil || u.Scheme != "tcp" || u.Host == "" {
		return "", false, false
	}
	return u.Host, os.Getenv("DOCKER_CERT_PATH") != "" || os.Getenv("DOCKER_TLS_VERIFY") != "", true
}

var warningRE = regexp.MustCompile(`API is accessible on (https?)://(\S+?) without (encryption|TLS client verification)`)

// warningExposure reads the engine's own TCP listeners from its /info
// warnings (dockerd 20.10 and later write one per insecure listener).
func warningExposure(warnings []string) []finding {
	var out []finding
	for _, w := range warnings {
		m := warningRE.FindStringSubmatch(w)
		if m == nil {
			continue
		}
		addr := strings.TrimSuffix(m[2], ".")
		if m[1] == "http" {
			out = append(out, finding{api: event.DockerAPI{Address: addr, Reachable: true}, source: "engine-info",
				note: "the engine listens on TCP without TLS"})
		} else {
			out = append(out, finding{api: event.DockerAPI{Address: addr, TLS: true}, source: "engine-info",
				note: "the engine listens on TCP with TLS but without client certificate verification",
				tags: []string{"docker-api-no-client-verify"}})
		}
	}
	return out
}

// probe asks addr (on 127.0.0.1) for GET /version over plain HTTP.
func probe(ctx context.Context, addr string) finding {
	f := finding{api: event.DockerAPI{Address: addr}, source: "probe"}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		f.note = "nothing listening"
		return f
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/version", nil)
	req.Header.Set("User-Agent", "whalewatch-collector")
	req.Close = true
	if err := req.Write(conn); err != nil {
		f.note = "listener closed the connection"
		return f
	}
	resp, err := http.ReadResponse(bufio.NewReader(io.LimitReader(conn, 64<<10)), req)
	if err != nil {
		f.note = "listener does not speak HTTP (TLS or another protocol)"
		return f
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<10))
	if resp.StatusCode == http.StatusBadRequest && strings.Contains(string(body), "HTTP request to an HTTPS server") {
		f.api.TLS = true
		f.note = "listener requires TLS"
		return f
	}
	var v struct{ ApiVersion, Version string }
	if resp.StatusCode == http.StatusOK && json.Unmarshal(body, &v) == nil && v.ApiVersion != "" {
		f.api.Reachable = true
		f.api.Version = event.Truncate(v.ApiVersion, 32)
		f.note = "Engine API answers without TLS"
		return f
	}
	f.note = "listener is not the Engine API (" + event.Truncate(resp.Status, 64) + ")"
	return f
}

// exposureEvent is one finding as host-scoped config telemetry. Every check
// publishes anew (a configuration snapshot), so the id includes its time.
func exposureEvent(host string, f finding, now time.Time) *event.Event {
	api := f.api
	return &event.Event{
		Timestamp: now.UTC(),
		Message:   fmt.Sprintf("Docker Engine API at %s (%s): %s", api.Address, f.source, f.note),
		Tags:      f.tags,
		Event: event.Meta{
			ID: event.DeriveID(host, "docker-api", f.source, api.Address, strconv.FormatBool(api.TLS),
				strconv.FormatBool(api.Reachable), strconv.FormatInt(now.UnixNano(), 10)),
			Kind:     event.KindEvent,
			Category: []string{"configuration"},
			Type:     []string{"info"},
			Action:   "docker-api-exposure",
			Dataset:  event.TelemetryConfig.Dataset(),
			Module:   event.Module,
			Created:  now.UTC(),
		},
		Host: event.Host{Name: host},
		Whalewatch: event.Whalewatch{
			SchemaVersion: event.SchemaVersion,
			Telemetry:     event.TelemetryConfig,
			DockerAPI:     &api,
		},
	}
}
