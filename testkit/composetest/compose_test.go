package composetest

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

func load(t *testing.T, name string) File {
	t.Helper()
	root, err := Root()
	require.NoError(t, err)
	f, err := Load(filepath.Join(root, name))
	require.NoError(t, err)
	return f
}

// TestHardening: what issue 9 asks of every service in the production file.
func TestHardening(t *testing.T) {
	t.Parallel()
	f := load(t, "docker-compose.yml")
	oneShot := map[string]bool{"es-setup": true, "setup": true, "nats-setup": true}
	// Elasticsearch and Kibana write into their image (keystore, data/).
	writable := map[string]bool{"elasticsearch": true, "kibana": true, "es-setup": true}
	scaled := map[string]bool{"detector": true, "indexer": true, "notifier": true}
	for name, s := range f.Services {
		t.Run(name, func(t *testing.T) {
			require.Contains(t, s.CapDrop, "ALL", "capabilities not dropped")
			if !writable[name] {
				require.True(t, s.ReadOnly, "root filesystem writable")
			}
			for dep, d := range s.DependsOn {
				require.Contains(t, []string{"service_healthy", "service_completed_successfully"}, d.Condition, "depends on %s without waiting for its health", dep)
			}
			if oneShot[name] {
				return
			}
			require.NotNil(t, s.Healthcheck, "no healthcheck")
			require.NotEmpty(t, s.Healthcheck.Test)
			require.Equal(t, "unless-stopped", s.Restart)
			require.Positive(t, s.CPUs, "no CPU limit")
			require.NotEmpty(t, s.MemLimit, "no memory limit")
			if scaled[name] {
				require.Empty(t, s.Container, "a fixed container_name breaks --scale")
				require.Empty(t, s.Ports, "published ports break --scale")
				require.Equal(t, []string{"CMD", "/whalewatch", "healthcheck"}, s.Healthcheck.Test)
			}
		})
	}
	require.Regexp(t, `^\$\{DETECTOR_PARTITIONS:-[1-9][0-9]*\}$`, f.Services["detector"].Environment["PARTITIONS"], "detector replicas need partitions")
}

// TestNATSVersion: compose runs the nats-server the tests run.
func TestNATSVersion(t *testing.T) {
	t.Parallel()
	root, err := Root()
	require.NoError(t, err)
	mod, err := os.ReadFile(filepath.Join(root, "testkit", "go.mod"))
	require.NoError(t, err)
	m := regexp.MustCompile(`github.com/nats-io/nats-server/v2 v(\S+)`).FindSubmatch(mod)
	require.NotNil(t, m)
	require.Equal(t, "nats:"+string(m[1])+"-alpine", load(t, "docker-compose.yml").Services["nats"].Image)
}

// TestIdentities: each service connects with its own seed and inbox prefix
// (deploy/nats/README.md).
func TestIdentities(t *testing.T) {
	t.Parallel()
	f := load(t, "docker-compose.yml")
	for _, name := range []string{"detector", "indexer", "notifier", "collector"} {
		env := f.Services[name].Environment
		require.Equal(t, "/run/secrets/nats.nk", env["NATS_NKEY_FILE"], name)
		want := "_INBOX_" + name
		if name == "collector" {
			want = "_INBOX_${COLLECTOR_IDENTITY:?set COLLECTOR_IDENTITY in .env}"
		}
		require.Equal(t, want, env["NATS_INBOX_PREFIX"], name)
	}
	for _, v := range f.Services["nats"].Volumes {
		require.NotRegexp(t, `secrets\}?(/[^u]|:|$)`, v, "nats-server gets the services' seeds")
	}
}

// TestCollectorFile: a further host runs the collector and proxy of the main
// file, pointed at a remote NATS.
func TestCollectorFile(t *testing.T) {
	t.Parallel()
	main, other := load(t, "docker-compose.yml"), load(t, "docker-compose.collector.yml")
	require.ElementsMatch(t, []string{"collector", "docker-proxy"}, keys(other.Services), "a collector host runs nothing else")
	require.Equal(t, main.Services["docker-proxy"].Command, other.Services["docker-proxy"].Command)
	require.Equal(t, main.Services["docker-proxy"].Volumes, other.Services["docker-proxy"].Volumes)
	mc, oc := main.Services["collector"], other.Services["collector"]
	require.Equal(t, mc.CapAdd, oc.CapAdd)
	require.Equal(t, mc.User, oc.User)
	require.Equal(t, mc.PID, oc.PID)
	require.Equal(t, mc.NetworkMode, oc.NetworkMode)
	for _, v := range mc.Volumes {
		require.Contains(t, oc.Volumes, v)
	}
	for _, k := range []string{"DOCKER_HOST", "NATS_NKEY_FILE", "NATS_INBOX_PREFIX", "HOST_NAME", "RESPONSE_MODE"} {
		require.Equal(t, mc.Environment[k], oc.Environment[k], k)
	}
	require.Contains(t, oc.Environment["NATS_URL"], "${NATS_URL:?")
}

func keys[M ~map[string]V, V any](m M) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
