package requester

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
	resp "github.com/whalewatch/whalewatch/pkg/response"
)

func TestPolicyFiles(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("testdata/*.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			t.Parallel()
			_, err := LoadPolicy(f)
			if strings.HasSuffix(f, ".good.yaml") {
				require.NoError(t, err)
				return
			}
			want, rerr := os.ReadFile(strings.TrimSuffix(f, ".yaml") + ".err")
			require.NoError(t, rerr)
			require.ErrorContains(t, err, strings.TrimSpace(string(want)))
		})
	}
}

var (
	cid1 = strings.Repeat("a1", 32)
	cid2 = strings.Repeat("b2", 32)
)

func threat(rule string, sev event.Severity, image string, tags ...string) *event.Event {
	return &event.Event{
		Event:     event.Meta{ID: event.NewID(), Kind: event.KindAlert},
		Tags:      tags,
		Host:      event.Host{Name: "docker-1"},
		Container: &event.Container{ID: cid1, Name: "web", Image: event.Image{Name: image}},
		Rule:      &event.Rule{ID: rule, Name: rule},
		Whalewatch: event.Whalewatch{
			SchemaVersion: event.SchemaVersion, Severity: sev,
		},
	}
}

func TestDecide(t *testing.T) {
	t.Parallel()
	p, err := LoadPolicy("testdata/example.good.yaml")
	require.NoError(t, err)
	tests := []struct {
		name   string
		threat *event.Event
		want   string // rule name, "" for none
	}{
		{"miner high", threat("cryptominer-xmrig", event.SeverityHigh, "app"), "stop-cryptominers"},
		{"miner medium", threat("cryptominer-xmrig", event.SeverityMedium, "app"), ""},
		{"scanner any severity", threat("network-scan-fanout", event.SeverityLow, "app"), "contain-scanners"},
		{"cpu in batch image", threat("sustained-cpu", event.SeverityMedium, "registry.local/batch/etl"), "throttle-cpu-hogs"},
		{"cpu elsewhere", threat("sustained-cpu", event.SeverityMedium, "nginx"), ""},
		{"critical prod", threat("anything", event.SeverityCritical, "app", "prod"), "freeze-critical-in-prod"},
		{"critical untagged", threat("anything", event.SeverityCritical, "app"), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := ""
			if r := p.Decide(tt.threat); r != nil {
				got = r.Name
			}
			require.Equal(t, tt.want, got)
		})
	}
}

type recordingPublisher struct {
	mu   sync.Mutex
	subj []string
	evs  []*event.Event
}

func (p *recordingPublisher) Publish(_ context.Context, subj string, e *event.Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.subj = append(p.subj, subj)
	p.evs = append(p.evs, e)
	return nil
}

func TestResponder(t *testing.T) {
	t.Parallel()
	file := "testdata/example.good.yaml"
	tests := []struct {
		name, mode string
		wantDry    bool
		wantNil    bool
	}{
		{name: "policy alone is dry-run", mode: "", wantDry: true},
		{name: "dry-run", mode: ModeDryRun, wantDry: true},
		{name: "enforce", mode: ModeEnforce, wantDry: false},
		{name: "off", mode: ModeOff, wantNil: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := Config{PolicyFile: file, Mode: tt.mode, MinInterval: time.Minute}
			require.NoError(t, cfg.Validate())
			pub := &recordingPublisher{}
			r, err := New(cfg, pub, prometheus.NewRegistry())
			require.NoError(t, err)
			if tt.wantNil {
				require.Nil(t, r)
				req, err := r.Respond(t.Context(), threat("cryptominer-x", event.SeverityCritical, "app"))
				require.NoError(t, err)
				require.Nil(t, req)
				return
			}
			now := time.Unix(1000, 0)
			r.now = func() time.Time { return now }
			th := threat("cryptominer-x", event.SeverityCritical, "app")
			req, err := r.Respond(t.Context(), th)
			require.NoError(t, err)
			require.NotNil(t, req)
			require.NoError(t, req.Validate())
			require.Equal(t, "whalewatch.actions.request.docker-1."+cid1, pub.subj[0])
			parsed, err := resp.ParseRequest(req)
			require.NoError(t, err)
			require.EqualValues(t, resp.Kill, parsed.Action)
			require.Equal(t, tt.wantDry, parsed.DryRun)
			require.Equal(t, th.Event.ID, parsed.Trigger)
			require.Equal(t, event.DatasetResponse, req.Event.Dataset)

			// Rate-limited per container and action.
			req, err = r.Respond(t.Context(), threat("cryptominer-y", event.SeverityCritical, "app"))
			require.NoError(t, err)
			require.Nil(t, req)
			other := threat("cryptominer-y", event.SeverityCritical, "app")
			other.Container.ID = cid2
			req, err = r.Respond(t.Context(), other)
			require.NoError(t, err)
			require.NotNil(t, req, "another container")
			now = now.Add(time.Minute)
			req, err = r.Respond(t.Context(), threat("cryptominer-z", event.SeverityCritical, "app"))
			require.NoError(t, err)
			require.NotNil(t, req, "interval passed")

			// A rule with dry_run stays dry-run.
			req, err = r.Respond(t.Context(), threat("x", event.SeverityCritical, "app", "prod"))
			require.NoError(t, err)
			require.True(t, req.Whalewatch.Response.DryRun)
			// No rule: no request.
			req, err = r.Respond(t.Context(), threat("x", event.SeverityLow, "app"))
			require.NoError(t, err)
			require.Nil(t, req)
		})
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	require.ErrorContains(t, (&Config{Mode: ModeEnforce}).Validate(), "needs response-policy")
	require.ErrorContains(t, (&Config{Mode: "yolo"}).Validate(), "want off, dry-run or enforce")
	require.ErrorContains(t, (&Config{PolicyFile: "testdata/typo.bad.yaml"}).Validate(), "field rule not found")
	require.NoError(t, (&Config{PolicyFile: "testdata/typo.bad.yaml", Mode: ModeOff}).Validate(), "off ignores the policy")
	require.NoError(t, (&Config{}).Validate())
}
