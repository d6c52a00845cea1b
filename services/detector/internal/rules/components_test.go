package rules

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

// componentLabel names a whalewatch service on its containers (docker-compose.yml).
const componentLabel = "whalewatch.component"

// TestComponentExemptionsMatchCompose keeps the shipped exemptions of
// whalewatch's own containers and the production deployment in step: every
// exception for a component names a service of docker-compose.yml (or
// docker-compose.collector.yml) that carries that label value and runs one of
// the exception's images, and every service names itself in the label.
func TestComponentExemptionsMatchCompose(t *testing.T) {
	t.Parallel()
	type service struct {
		Image  string            `yaml:"image"`
		Labels map[string]string `yaml:"labels"`
	}
	services := map[string]service{}
	for _, f := range []string{"../../../../docker-compose.yml", "../../../../docker-compose.collector.yml"} {
		data, err := os.ReadFile(f)
		require.NoError(t, err)
		var c struct {
			Services map[string]service `yaml:"services"`
		}
		require.NoError(t, yaml.Unmarshal(data, &c), f)
		for name, s := range c.Services {
			require.Equal(t, name, s.Labels[componentLabel], "%s: service %s names itself in %s", f, name, componentLabel)
			services[name] = s
		}
	}

	n := 0
	for _, r := range shippedSet(t).Rules() {
		for _, x := range r.Exceptions {
			comp, ok := x.Labels[componentLabel]
			if !ok {
				continue
			}
			n++
			require.NotEmpty(t, x.Images, "%s: the exception for %s also requires the image (a label alone can be spoofed)", r.ID, comp)
			s, ok := services[comp]
			require.True(t, ok, "%s: no service %s in the compose files", r.ID, comp)
			image := s.Image
			if i := strings.Index(image, ":${"); i >= 0 { // a tag from the environment
				image = image[:i]
			} else if i := strings.LastIndexByte(image, ':'); i > strings.LastIndexByte(image, '/') {
				image = image[:i]
			}
			require.Contains(t, x.Images, image, "%s: the exception for %s does not match its image %s", r.ID, comp, s.Image)
		}
	}
	require.Positive(t, n, "the shipped rules exempt whalewatch's own containers")
}
