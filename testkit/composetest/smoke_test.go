package composetest

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/testkit/dockertest"
	"github.com/whalewatch/whalewatch/testkit/e2e"
	"github.com/whalewatch/whalewatch/testkit/natsauth"
	"github.com/whalewatch/whalewatch/testkit/natstest"
)

// SmokeEnv turns TestComposeSmoke on (make test-compose): it builds images
// and runs the whole stack, a few minutes.
const SmokeEnv = "WHALEWATCH_COMPOSE_SMOKE"

const smokeHost = "smokehost"

// TestComposeSmoke starts docker-compose.yml as containers on this engine
// with docker-compose (1.29 here), the service images built FROM scratch with
// deploy/Dockerfile from the binaries, and deploy/smoke's stand-ins for what
// cannot be pulled; runs `nc -l` in a container; and follows the threat to
// the Elasticsearch and Slack stand-ins. Everything it made is removed.
func TestComposeSmoke(t *testing.T) {
	if os.Getenv(SmokeEnv) != "1" {
		t.Skipf("set %s=1 (make test-compose) to start the compose stack", SmokeEnv)
	}
	dockertest.Available(t)
	if _, err := exec.LookPath("docker-compose"); err != nil {
		t.Skipf("no docker-compose: %v", err)
	}
	root, err := Root()
	require.NoError(t, err)
	tag := fmt.Sprintf("smoke%d", time.Now().UnixNano()%1e9)
	buildImages(t, root, tag)

	d := natsauth.Deploy(t, smokeHost)
	for _, id := range []string{"detector", "indexer", "notifier", "setup", "collector-" + smokeHost} {
		require.NoError(t, os.Chown(d.Seed(id), 65534, 65534)) // the services' user (deploy/Dockerfile)
	}
	port := func() string { _, p, _ := strings.Cut(e2e.FreeAddr(t), ":"); return p }
	esPort, slackPort := port(), port()
	envFile := filepath.Join(t.TempDir(), "env") // not the repository's .env
	require.NoError(t, os.WriteFile(envFile, nil, 0o600))
	project := "wwsmoke" + tag
	env := append(os.Environ(),
		"COMPOSE_PROJECT_NAME="+project, "WHALEWATCH_TAG="+tag, "SMOKE_TAG="+tag,
		"ELASTIC_PASSWORD=smoke-es", "KIBANA_PASSWORD=smoke-kibana",
		"HOST_NAME="+smokeHost, "COLLECTOR_IDENTITY=collector-"+smokeHost, "NATS_SECRETS="+d.Secrets(),
		"NATS_PORT="+port(), "NATS_MONITOR_PORT="+port(), "ES_PORT="+esPort, "KIBANA_PORT="+port(),
		"SLACK_PORT="+slackPort, "COLLECTOR_ADMIN_PORT="+port(), "DETECTOR_PARTITIONS=4")
	compose := func(args ...string) (string, error) {
		full := append([]string{"--env-file", envFile, "-f", filepath.Join(root, "docker-compose.yml"),
			"-f", filepath.Join(root, "deploy", "smoke", "docker-compose.smoke.yml"), "--project-directory", root}, args...)
		cmd := exec.Command("docker-compose", full...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() {
		if t.Failed() {
			ps, _ := compose("ps")
			logs, _ := compose("logs", "--no-color", "--tail", "40")
			t.Logf("compose ps:\n%s\ncompose logs:\n%s", ps, logs)
		}
		if out, err := compose("down", "-v", "--remove-orphans", "-t", "10"); err != nil {
			t.Errorf("compose down: %v\n%s", err, out)
		}
	})
	out, err := compose("up", "-d", "--no-build")
	require.NoError(t, err, "compose up:\n%s", out)

	// Every service with a healthcheck becomes healthy.
	natstest.Eventually(t, 3*time.Minute, func() bool {
		ids := strings.Fields(dockertest.Docker(t, "ps", "-q", "--filter", "label=com.docker.compose.project="+project))
		if len(ids) < 9 { // all but es-setup, setup and nats-setup, which have exited

			return false
		}
		for _, id := range ids {
			h, _ := dockertest.Try("inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}", id)
			if h != "healthy" && h != "none" {
				return false
			}
		}
		return true
	}, "the stack did not become healthy (compose ps and logs follow)")

	id := dockertest.Run(t, nil, "nc", "-l", "-p", "4444")
	name := strings.TrimPrefix(dockertest.Docker(t, "inspect", "-f", "{{.Name}}", id), "/")
	// The exec of nc, seen by the collector in its container (kernel sensor,
	// else process connector, else docker top), becomes the netcat threat:
	// not merely one of the configuration findings every busybox container
	// raises when it starts.
	natstest.Eventually(t, 3*time.Minute, func() bool {
		body := stubGet(t, "http://127.0.0.1:"+esPort+"/_stub/docs")
		return slices.Contains(threatsByContainer(t, body)[name], "suspicious-tool-netcat")
	}, "no suspicious-tool-netcat threat about %s in the Elasticsearch stand-in", name)
	natstest.Eventually(t, 2*time.Minute, func() bool {
		msgs := stubGet(t, "http://127.0.0.1:"+slackPort+"/_stub/messages")
		return strings.Contains(msgs, name) && strings.Contains(msgs, "nc -l -p 4444")
	}, "no Slack message about nc -l in %s", name)

	// whalewatch raises nothing about its own containers (issue 9 item 6: the
	// detector's exemptions for label whalewatch.component, resource limits on
	// every service). Own means run from whalewatch's images: the stand-ins
	// (nats, docker-proxy, elasticsearch, kibana, slack) run other images than
	// the exemptions name, so they raise what the real images are exempt from;
	// and the engine runs other containers (other tests, idle benchmark
	// fleets) that may alert.
	images := map[string]string{} // container name: image
	for _, line := range strings.Split(dockertest.Docker(t, "ps", "-a", "--filter", "label=com.docker.compose.project="+project,
		"--format", "{{.Names}} {{.Image}}"), "\n") {
		if n, img, ok := strings.Cut(strings.TrimSpace(line), " "); ok {
			images[n] = img
		}
	}
	threats := threatsByContainer(t, stubGet(t, "http://127.0.0.1:"+esPort+"/_stub/docs"))
	var own, standIns []string
	others := 0
	for c, rules := range threats {
		img, inStack := images[c]
		switch {
		case inStack && strings.HasPrefix(img, "whalewatch/"):
			own = append(own, c+": "+strings.Join(rules, ","))
		case inStack:
			standIns = append(standIns, c+" ("+img+"): "+strings.Join(rules, ","))
		case c == name:
			t.Logf("threats about the attack container %s: %v", name, rules)
		default:
			others++
		}
	}
	slices.Sort(standIns)
	t.Logf("threats about the stand-ins (not whalewatch's images; not asserted): %v", standIns)
	t.Logf("threats about %d containers outside this stack (not asserted)", others)
	require.NotEmpty(t, images, "the stack's containers")
	require.Empty(t, own, "threats about whalewatch's own containers")
	for c, img := range images {
		if strings.HasPrefix(img, "whalewatch/") {
			require.NotContains(t, stubGet(t, "http://127.0.0.1:"+slackPort+"/_stub/messages"), c,
				"a Slack message about whalewatch's own container %s", c)
		}
	}
}

// threatsByContainer reads the Elasticsearch stand-in's documents and returns,
// per container name ("" for a host), the sorted ids of the rules of its threats.
func threatsByContainer(t *testing.T, body string) map[string][]string {
	var docs []struct{ Source json.RawMessage }
	require.NoError(t, json.Unmarshal([]byte(body), &docs))
	seen := map[string]map[string]bool{}
	for _, d := range docs {
		var doc struct {
			Rule      struct{ ID string }   `json:"rule"`
			Container struct{ Name string } `json:"container"`
		}
		if json.Unmarshal(d.Source, &doc) != nil || doc.Rule.ID == "" {
			continue // telemetry and responses, not threats
		}
		if seen[doc.Container.Name] == nil {
			seen[doc.Container.Name] = map[string]bool{}
		}
		seen[doc.Container.Name][doc.Rule.ID] = true
	}
	out := make(map[string][]string, len(seen))
	for c, rules := range seen {
		out[c] = slices.Sorted(maps.Keys(rules))
	}
	return out
}

func stubGet(t *testing.T, url string) string {
	resp, err := http.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// buildImages builds whalewatch/<service>:tag with deploy/Dockerfile from the
// binaries, and the stand-ins' images, all removed when the test ends.
func buildImages(t *testing.T, root, tag string) {
	bin := e2e.Binaries(t)
	ctx := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(ctx, "bin"), 0o755))
	ca, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	if err != nil {
		ca = nil // an empty bundle: the stand-ins speak plain HTTP
	}
	require.NoError(t, os.WriteFile(filepath.Join(ctx, "bin", "ca-certificates.crt"), ca, 0o644))
	copyFile := func(src, dst string) {
		b, err := os.ReadFile(src)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(dst, b, 0o755))
	}
	build := func(ref, dockerfile string, args ...string) {
		full := append([]string{"build", "--network", "none", "-q", "-t", ref, "-f", dockerfile}, args...)
		dockertest.Docker(t, append(full, ctx)...)
		t.Cleanup(func() { _, _ = dockertest.Try("rmi", "-f", ref) })
	}
	for _, s := range []string{"collector", "detector", "indexer", "notifier"} {
		copyFile(filepath.Join(bin, s), filepath.Join(ctx, "bin", s))
		build("whalewatch/"+s+":"+tag, filepath.Join(root, "deploy", "Dockerfile"), "--build-arg", "SERVICE="+s)
	}
	copyFile(filepath.Join(bin, "nats-server"), filepath.Join(ctx, "nats-server"))
	bb, err := exec.LookPath("busybox")
	require.NoError(t, err, "busybox-static is needed for the NATS image's wget")
	copyFile(bb, filepath.Join(ctx, "busybox"))
	stubs := filepath.Join(ctx, "stubs")
	cmd := exec.Command("go", "build", "-o", stubs, "./cmd/stubs")
	cmd.Dir = filepath.Join(root, "testkit")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "building the stand-ins: %s", out)
	df := func(name, text string) string {
		p := filepath.Join(ctx, name)
		require.NoError(t, os.WriteFile(p, []byte(text), 0o644))
		return p
	}
	build("whalewatch-smoke/nats:"+tag, df("Dockerfile.nats",
		"FROM scratch\nCOPY nats-server /nats-server\nCOPY busybox /bin/wget\nENTRYPOINT [\"/nats-server\"]\n"))
	build("whalewatch-smoke/stubs:"+tag, df("Dockerfile.stubs",
		"FROM scratch\nCOPY stubs /stubs\nCOPY stubs /healthcheck\nENTRYPOINT [\"/stubs\"]\n"))
}
