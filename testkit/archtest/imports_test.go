package archtest

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const repo = "github.com/whalewatch/whalewatch/"

// Only the collector may reach the Docker Engine, only the indexer
// Elasticsearch, only the notifier Slack; services never import each other,
// only pkg; and pkg imports none of them (nor test code).
func TestImportBoundaries(t *testing.T) {
	t.Parallel()
	exclusive := map[string]string{
		"github.com/docker/docker/client":          "collector",
		"github.com/elastic/go-elasticsearch/v8":   "indexer",
		"github.com/slack-go/slack":                "notifier",
		"github.com/nats-io/nats-server/v2/server": "",
		repo + "testkit":                           "",
	}
	services := []string{"collector", "detector", "indexer", "notifier"}
	for _, owner := range append(services, "pkg") {
		dir := "../../services/" + owner
		if owner == "pkg" {
			dir = "../../pkg"
		}
		deps := listDeps(t, dir)
		for lib, allowed := range exclusive {
			if allowed == owner && !deps[lib] {
				t.Errorf("%s does not import %s: is the dependency listing broken?", owner, lib)
			}
		}
		for dep := range deps {
			for lib, allowed := range exclusive {
				if (dep == lib || strings.HasPrefix(dep, lib+"/")) && allowed != owner {
					t.Errorf("%s imports %s, which only %q may import", owner, dep, allowed)
				}
			}
			for _, other := range services {
				if other != owner && strings.HasPrefix(dep, repo+"services/"+other) {
					t.Errorf("%s imports another service: %s", owner, dep)
				}
			}
		}
	}
}

func listDeps(t *testing.T, dir string) map[string]bool {
	t.Helper()
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "list", "-deps", "./...")
	cmd.Dir = abs
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps in %s: %v", dir, err)
	}
	deps := map[string]bool{}
	for _, l := range strings.Fields(string(out)) {
		deps[l] = true
	}
	if len(deps) < 10 {
		t.Fatalf("go list -deps in %s found only %d packages", dir, len(deps))
	}
	return deps
}
