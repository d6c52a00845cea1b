package route

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
)

var outputs = []string{"console", "slack-webhook", "slack-api", "json-webhook"}

func TestBadFiles(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("testdata/*.bad.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			t.Parallel()
			want, err := os.ReadFile(strings.TrimSuffix(f, ".yaml") + ".err")
			require.NoError(t, err)
			_, err = Load(f, outputs)
			require.Error(t, err)
			require.Equal(t, strings.TrimSpace(string(want)), err.Error())
		})
	}
}

func threat(sev event.Severity, image string, labels map[string]string, tags ...string) *event.Event {
	return &event.Event{
		Tags:       tags,
		Container:  &event.Container{ID: "c1", Image: event.Image{Name: image}, Labels: labels},
		Whalewatch: event.Whalewatch{Severity: sev},
	}
}

func TestGoodFile(t *testing.T) {
	t.Parallel()
	tab, err := Load("testdata/routes.good.yaml", outputs)
	require.NoError(t, err)
	require.Equal(t, event.SeverityMedium, tab.MinSeverity("slack-webhook"))
	require.Equal(t, event.SeverityLow, tab.MinSeverity("console"))
	tests := []struct {
		name string
		e    *event.Event
		want []string
	}{
		{"critical goes to the bot only", threat(event.SeverityCritical, "nginx:1", nil), []string{"slack-api"}},
		{"payments shop image", threat(event.SeverityHigh, "shop/cart:2", map[string]string{"team": "payments"}), []string{"slack-webhook", "json-webhook"}},
		{"payments low is below the webhook's minimum", threat(event.SeverityLow, "shop/cart:2", map[string]string{"team": "payments"}), []string{"json-webhook"}},
		{"label without image", threat(event.SeverityHigh, "nginx:1", map[string]string{"team": "payments"}), []string{"console", "slack-webhook"}},
		{"tag", threat(event.SeverityMedium, "nginx:1", nil, "attack.t1095"), []string{"slack-webhook"}},
		{"unmatched goes to the default", threat(event.SeverityMedium, "nginx:1", nil), []string{"console", "slack-webhook"}},
		{"unmatched low", threat(event.SeverityLow, "nginx:1", nil), []string{"console"}},
		{"critical payments: both routes", threat(event.SeverityCritical, "shop/x", map[string]string{"team": "payments"}), []string{"slack-webhook", "slack-api", "json-webhook"}},
	}
	for _, tt := range tests {
		var got []string
		for _, o := range outputs {
			if tab.Wants(o, tt.e) {
				got = append(got, o)
			}
		}
		require.ElementsMatch(t, tt.want, got, tt.name)
	}
}

func TestAllAndEmpty(t *testing.T) {
	t.Parallel()
	for _, tab := range []*Table{All(outputs), must(Parse("empty.yaml", nil, outputs))} {
		for _, o := range outputs {
			require.True(t, tab.Wants(o, threat(event.SeverityLow, "x", nil)))
		}
	}
}

func must(t *Table, err error) *Table {
	if err != nil {
		panic(err)
	}
	return t
}
