package composetest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/response"
	"github.com/whalewatch/whalewatch/testkit/dockertest"
	"github.com/whalewatch/whalewatch/testkit/e2e"
	"github.com/whalewatch/whalewatch/testkit/natstest"
)

const engineSocket = "/var/run/docker.sock"

// TestSocketProxyAllowList runs the collector binary in enforce mode against
// the engine through a recording proxy while a container starts, logs, gets
// an exec, is paused and unpaused by response requests and stops; every
// Engine API call it made must pass the socket proxy's allow-list of the
// compose files: GET and HEAD from docker-compose.yml alone (responses off or
// dry-run), POST only with docker-compose.respond.yml.
func TestSocketProxyAllowList(t *testing.T) {
	if _, err := os.Stat(engineSocket); err != nil {
		t.Skipf("no engine socket: %v", err)
	}
	dockertest.Available(t)
	main, respond := load(t, "docker-compose.yml"), load(t, "docker-compose.respond.yml")
	readOnly, err := ProxyAllowList("docker-proxy", main)
	require.NoError(t, err)
	require.Empty(t, readOnly["POST"], "docker-compose.yml lets POSTs through: responses would act")
	enforcing, err := ProxyAllowList("docker-proxy", main, respond)
	require.NoError(t, err)
	require.NotEmpty(t, enforcing["POST"])

	bin := e2e.Binaries(t)
	rec := NewRecorder(t, engineSocket)
	url := e2e.StartNATS(t, bin)
	host := fmt.Sprintf("composetest-%d", time.Now().UnixNano())
	e2e.Start(t, "collector", filepath.Join(bin, "collector"), map[string]string{
		"NATS_URL":      url,
		"DOCKER_HOST":   "unix://" + rec.Socket,
		"HOST_NAME":     host,
		"HTTP_ADDR":     e2e.FreeAddr(t),
		"RESPONSE_MODE": "enforce",
		"LOG_FORMAT":    "text",
	}).WaitReady(t, 60*time.Second)

	id := dockertest.Run(t, nil, "sh", "-c", "echo started; while true; do echo tick; sleep 1; done")
	saw := func(method, path string) bool {
		re := regexp.MustCompile(`^(/v1\.[0-9]+)?` + path + `$`)
		return rec.Saw(method, re.MatchString)
	}
	natstest.Eventually(t, 60*time.Second, func() bool { return saw("GET", "/containers/"+id+"/json") }, "the collector never inspected the container; calls: %v", rec.Calls())
	dockertest.Docker(t, "exec", id, "sh", "-c", "echo from-exec")

	nc, err := nats.Connect(url)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	pub := bus.NewEventPublisher(js, prometheus.NewRegistry())
	for _, action := range []response.Action{response.Pause, response.Unpause} {
		var e *event.Event
		e, err = response.NewRequest(response.Request{Host: host, ContainerID: id, Action: action, Reason: "composetest"})
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		require.NoError(t, pub.Publish(ctx, response.RequestSubject(e), e))
		cancel()
		natstest.Eventually(t, 60*time.Second, func() bool { return saw("POST", "/containers/"+id+"/"+string(action)) }, "no POST %s; calls: %v", action, rec.Calls())
	}
	dockertest.Docker(t, "stop", "-t", "1", id)
	natstest.Eventually(t, 30*time.Second, func() bool { return saw("GET", "/events") }, "no event stream; calls: %v", rec.Calls())

	calls := rec.Calls()
	t.Logf("Engine API calls of the collector: %v", shapes(calls))
	for _, c := range calls {
		require.True(t, enforcing.Allows(c.Method, c.Path), "%s %s is refused by the socket proxy of docker-compose.yml + docker-compose.respond.yml", c.Method, c.Path)
		if c.Method != "POST" {
			require.True(t, readOnly.Allows(c.Method, c.Path), "%s %s is refused by the socket proxy of docker-compose.yml", c.Method, c.Path)
		}
	}
	// The list is not wider than the collector needs: nothing that starts,
	// creates or deletes anything, no exec into a container, no image.
	for _, c := range []Call{
		{"POST", "/v1.41/containers/create"}, {"POST", "/v1.41/containers/" + id + "/start"},
		{"POST", "/v1.41/containers/" + id + "/exec"}, {"POST", "/v1.41/exec/" + strings.Repeat("a", 64) + "/start"},
		{"DELETE", "/v1.41/containers/" + id}, {"GET", "/v1.41/images/json"}, {"POST", "/v1.41/images/create"},
		{"GET", "/v1.41/containers/" + id + "/archive"}, {"GET", "/v1.41/containers/" + id + "/export"},
		{"POST", "/v1.41/build"}, {"GET", "/v1.41/secrets"}, {"POST", "/v1.41/containers/" + id + "/../create"},
	} {
		require.False(t, enforcing.Allows(c.Method, c.Path), "the allow-list lets %s %s through", c.Method, c.Path)
	}
}

// shapes is calls with ids replaced by {id}, once each.
func shapes(calls []Call) []string {
	hex := regexp.MustCompile(`[0-9a-f]{64}`)
	seen := map[string]bool{}
	var out []string
	for _, c := range calls {
		s := c.Method + " " + hex.ReplaceAllString(c.Path, "{id}")
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
