package exposure

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/docker/docker/api/types/system"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/subject"
	"github.com/whalewatch/whalewatch/services/collector/internal/source/sourcetest"
)

// fakeEngineAPI is an Engine API answering GET /version without TLS, on 127.0.0.1.
func fakeEngineAPI(t *testing.T, tls bool) int {
	t.Helper()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/version" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"Version":"20.10.24","ApiVersion":"1.41","Os":"linux"}`))
	})
	var s *httptest.Server
	if tls {
		s = httptest.NewTLSServer(h)
	} else {
		s = httptest.NewServer(h)
	}
	t.Cleanup(s.Close)
	_, port, err := net.SplitHostPort(s.Listener.Addr().String())
	require.NoError(t, err)
	p, err := strconv.Atoi(port)
	require.NoError(t, err)
	return p
}

// closedPort is a loopback port with nothing listening.
func closedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	return port
}

type fakeInfo struct{ warnings []string }

func (f fakeInfo) Info(context.Context) (system.Info, error) {
	return system.Info{Warnings: f.warnings}, nil
}

func TestExposureCheck(t *testing.T) {
	t.Parallel()
	open, tlsPort, closed := fakeEngineAPI(t, false), fakeEngineAPI(t, true), closedPort(t)
	other := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(other.Close)
	otherPort := other.Listener.Addr().(*net.TCPAddr).Port
	x := &Checker{host: "h", interval: time.Hour, ports: []int{open, tlsPort, closed, otherPort},
		info: fakeInfo{warnings: []string{
			"WARNING: API is accessible on http://0.0.0.0:2375 without encryption.\n         Access to the remote API is equivalent to root access on the host.",
			"WARNING: API is accessible on https://[::]:2376 without TLS client verification.\n  ...",
			"WARNING: No swap limit support",
		}},
		log: sourcetest.Log(), now: time.Now}
	es := x.check(t.Context())
	var got []event.DockerAPI
	for _, e := range es {
		require.NoError(t, e.Validate())
		require.Nil(t, e.Container)
		require.Equal(t, "whalewatch.telemetry.h."+subject.HostScope+".config", subject.ForTelemetry(e))
		require.Equal(t, []string{"configuration"}, e.Event.Category)
		got = append(got, *e.Whalewatch.DockerAPI)
	}
	loop := func(p int) string { return "127.0.0.1:" + strconv.Itoa(p) }
	require.Equal(t, []event.DockerAPI{
		{Address: "0.0.0.0:2375", Reachable: true},
		{Address: "[::]:2376", TLS: true},
		{Address: loop(open), Reachable: true, Version: "1.41"},
		{Address: loop(tlsPort), TLS: true},
		{Address: loop(closed)},
		{Address: loop(otherPort)},
	}, got)
	require.Equal(t, []string{"docker-api-no-client-verify"}, es[1].Tags)
}

func TestConfiguredEndpoint(t *testing.T) {
	// Not parallel: reads DOCKER_CERT_PATH / DOCKER_TLS_VERIFY.
	t.Setenv("DOCKER_CERT_PATH", "")
	t.Setenv("DOCKER_TLS_VERIFY", "")
	addr, tls, ok := configuredEndpoint("tcp://10.1.2.3:2375")
	require.True(t, ok)
	require.Equal(t, "10.1.2.3:2375", addr)
	require.False(t, tls)
	_, _, ok = configuredEndpoint("unix:///var/run/docker.sock")
	require.False(t, ok)
	t.Setenv("DOCKER_TLS_VERIFY", "1")
	_, tls, ok = configuredEndpoint("tcp://10.1.2.3:2376")
	require.True(t, ok)
	require.True(t, tls)
}

// A tcp:// DOCKER_HOST is probed before anything is reported: only an
// endpoint that answers the Engine API without TLS is reachable.
func TestConfiguredEndpointIsProbed(t *testing.T) {
	// Not parallel: reads DOCKER_CERT_PATH / DOCKER_TLS_VERIFY.
	t.Setenv("DOCKER_CERT_PATH", "")
	t.Setenv("DOCKER_TLS_VERIFY", "")
	open, tlsPort, closed := fakeEngineAPI(t, false), fakeEngineAPI(t, true), closedPort(t)
	for _, tt := range []struct {
		port int
		want event.DockerAPI
	}{
		{open, event.DockerAPI{Reachable: true, Version: "1.41"}},
		{tlsPort, event.DockerAPI{TLS: true}},
		{closed, event.DockerAPI{}},
	} {
		addr := "127.0.0.1:" + strconv.Itoa(tt.port)
		x := &Checker{host: "h", interval: time.Hour, dockerHost: "tcp://" + addr, log: sourcetest.Log(), now: time.Now}
		es := x.check(t.Context())
		require.Len(t, es, 1)
		tt.want.Address = addr
		require.Equal(t, tt.want, *es[0].Whalewatch.DockerAPI)
		require.Contains(t, es[0].Message, "(docker-host): the collector's DOCKER_HOST: ")
	}
}

func TestExposureRunPublishesAtOnce(t *testing.T) {
	t.Parallel()
	port := fakeEngineAPI(t, false)
	x := &Checker{host: "h", interval: time.Hour, ports: []int{port}, log: sourcetest.Log(), now: time.Now}
	ctx, cancel := context.WithCancel(t.Context())
	got := make(chan *event.Event, 4)
	done := make(chan error)
	go func() { done <- x.Run(ctx, func(e *event.Event) { got <- e }) }()
	e := <-got
	require.True(t, e.Whalewatch.DockerAPI.Reachable)
	cancel()
	require.NoError(t, <-done)
}

func TestConfigPorts(t *testing.T) {
	t.Parallel()
	cfg := Config{ProbePorts: "2375,2376"}
	require.Equal(t, []int{2375, 2376}, cfg.Ports())
	cfg.ProbePorts = " 1, 2 ,,"
	require.Equal(t, []int{1, 2}, cfg.Ports())
	cfg.ProbePorts = ""
	require.Empty(t, cfg.Ports())
	cfg.ProbePorts = "80,x"
	require.ErrorContains(t, cfg.Validate(), `exposure-probe-ports: "x" is not a port`)
}
