package executor

import (
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/claim"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/response"
)

const (
	victim = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	selfID = "5e1f5e1f5e1f5e1f5e1f5e1f5e1f5e1f5e1f5e1f5e1f5e1f5e1f5e1f5e1f5e1f"
)

// fakeEngine is one container whose state the actions change.
type fakeEngine struct {
	mu    sync.Mutex
	in    container.InspectResponse
	calls []string
	fail  error // returned by the next action call
}

func newFakeEngine(id string, labels map[string]string, nets ...string) *fakeEngine {
	ns := map[string]*network.EndpointSettings{}
	for _, n := range nets {
		ns[n] = &network.EndpointSettings{}
	}
	return &fakeEngine{in: container.InspectResponse{
		ContainerJSONBase: &container.ContainerJSONBase{
			ID:         id,
			Name:       "/victim",
			State:      &container.State{Running: true, Status: "running"},
			HostConfig: &container.HostConfig{},
		},
		Config:          &container.Config{Image: "busybox:1", Labels: labels},
		NetworkSettings: &container.NetworkSettings{Networks: ns},
	}}
}

func (f *fakeEngine) ContainerInspect(_ context.Context, id string) (container.InspectResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.in.ID != id && !strings.HasPrefix(f.in.ID, id) {
		return container.InspectResponse{}, cerrdefs.ErrNotFound.WithMessage("No such container: " + id)
	}
	return f.in, nil
}

func (f *fakeEngine) call(name string, apply func(s *container.State)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, name)
	if err := f.fail; err != nil {
		f.fail = nil
		return err
	}
	apply(f.in.State)
	return nil
}

func (f *fakeEngine) ContainerPause(context.Context, string) error {
	return f.call("pause", func(s *container.State) { s.Paused = true })
}

func (f *fakeEngine) ContainerUnpause(context.Context, string) error {
	return f.call("unpause", func(s *container.State) { s.Paused = false })
}

func (f *fakeEngine) ContainerStop(_ context.Context, _ string, o container.StopOptions) error {
	return f.call("stop", func(s *container.State) { s.Running, s.Paused = false, false })
}

func (f *fakeEngine) ContainerKill(_ context.Context, _, sig string) error {
	return f.call("kill "+sig, func(s *container.State) { s.Running, s.Paused = false, false })
}

func (f *fakeEngine) ContainerUpdate(_ context.Context, _ string, u container.UpdateConfig) (container.UpdateResponse, error) {
	return container.UpdateResponse{}, f.call("update", func(*container.State) {
		f.in.HostConfig.NanoCPUs, f.in.HostConfig.CPUQuota, f.in.HostConfig.CPUPeriod = u.NanoCPUs, u.CPUQuota, u.CPUPeriod
	})
}

func (f *fakeEngine) NetworkDisconnect(_ context.Context, n, _ string, _ bool) error {
	return f.call("disconnect "+n, func(*container.State) { delete(f.in.NetworkSettings.Networks, n) })
}

// memClaims is a claimer in memory: a key is won once, then held until
// Done.
type memClaims struct {
	mu sync.Mutex
	m  map[string]claim.State
}

func (c *memClaims) Claim(_ context.Context, key string) (claim.Claim, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st, ok := c.m[key]; ok {
		return claim.Claim{State: st, Key: key}, nil
	}
	c.m[key] = claim.Held
	return claim.Claim{State: claim.Won, Key: key}, nil
}

func (c *memClaims) Done(_ context.Context, cl claim.Claim) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[cl.Key] = claim.Done
	return nil
}

// recorder is an eventPublisher that keeps what it published.
type recorder struct {
	mu  sync.Mutex
	got []*event.Event
	sub []string
}

func (r *recorder) Publish(_ context.Context, subj string, e *event.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, e)
	r.sub = append(r.sub, subj)
	return nil
}

func newTestResponder(t *testing.T, eng *fakeEngine, mode string) (*Executor, *recorder) {
	t.Helper()
	cfg := testConfig(t)
	cfg.Mode = mode
	pub := &recorder{}
	r := New(eng, nil, pub, cfg, "h", bus.StreamsConfig{}, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	r.claims = &memClaims{m: map[string]claim.State{}}
	r.self = selfID
	return r, pub
}

func request(t *testing.T, id string, action response.Action, mut ...func(*response.Request)) *event.Event {
	t.Helper()
	req := response.Request{Host: "h", ContainerID: id, Action: action, Reason: "test", Trigger: "threat-1"}
	if action == response.LimitCPU {
		req.CPUs = 0.5
	}
	for _, m := range mut {
		m(&req)
	}
	e, err := response.NewRequest(req)
	require.NoError(t, err)
	return e
}

func TestResponderDecides(t *testing.T) {
	t.Parallel()
	dry := func(r *response.Request) { r.DryRun = true }
	old := func(r *response.Request) { r.Time = time.Now().Add(-time.Hour) }
	tests := []struct {
		name      string
		mode      string
		id        string
		labels    map[string]string
		nets      []string
		action    response.Action
		mut       []func(*response.Request)
		setup     func(*fakeEngine)
		status    response.Status
		reason    string
		calls     []string
		check     func(t *testing.T, f *fakeEngine)
		protected string
	}{
		{name: "dry-run mode", mode: ModeDryRun, action: response.Pause, status: response.StatusDryRun, reason: "dry run: would pause the container"},
		{name: "dry-run request in enforce mode", mode: ModeEnforce, action: response.Kill, mut: []func(*response.Request){dry}, status: response.StatusDryRun, reason: "would kill"},
		{name: "pause", mode: ModeEnforce, action: response.Pause, status: response.StatusDone, reason: "paused", calls: []string{"pause"},
			check: func(t *testing.T, f *fakeEngine) { require.True(t, f.in.State.Paused) }},
		{name: "pause paused", mode: ModeEnforce, action: response.Pause, setup: func(f *fakeEngine) { f.in.State.Paused = true },
			status: response.StatusDone, reason: "already paused"},
		{name: "pause stopped", mode: ModeEnforce, action: response.Pause, setup: func(f *fakeEngine) { f.in.State.Running = false },
			status: response.StatusFailed, reason: "container is not running"},
		{name: "unpause", mode: ModeEnforce, action: response.Unpause, setup: func(f *fakeEngine) { f.in.State.Paused = true },
			status: response.StatusDone, calls: []string{"unpause"}},
		{name: "unpause running", mode: ModeEnforce, action: response.Unpause, status: response.StatusDone, reason: "not paused"},
		{name: "stop", mode: ModeEnforce, action: response.Stop, status: response.StatusDone, calls: []string{"stop"}},
		{name: "kill", mode: ModeEnforce, action: response.Kill, status: response.StatusDone, calls: []string{"kill KILL"}},
		{name: "kill stopped", mode: ModeEnforce, action: response.Kill, setup: func(f *fakeEngine) { f.in.State.Running = false },
			status: response.StatusDone, reason: "not running"},
		{name: "disconnect", mode: ModeEnforce, action: response.Disconnect, nets: []string{"none"}, status: response.StatusDone,
			reason: "connected to no network"},
		{name: "disconnect two", mode: ModeEnforce, action: response.Disconnect, nets: []string{"a", "b"}, status: response.StatusDone,
			check: func(t *testing.T, f *fakeEngine) {
				require.ElementsMatch(t, []string{"disconnect a", "disconnect b"}, f.calls)
				require.Empty(t, f.in.NetworkSettings.Networks)
			}},
		{name: "disconnect host", mode: ModeEnforce, action: response.Disconnect, nets: []string{"host"}, status: response.StatusFailed,
			reason: "host network cannot be disconnected"},
		{name: "limit cpu", mode: ModeEnforce, action: response.LimitCPU, status: response.StatusDone, calls: []string{"update"},
			check: func(t *testing.T, f *fakeEngine) { require.EqualValues(t, 5e8, f.in.HostConfig.NanoCPUs) }},
		{name: "limit cpu by quota", mode: ModeEnforce, action: response.LimitCPU, status: response.StatusDone, calls: []string{"update"},
			setup: func(f *fakeEngine) { f.in.HostConfig.CPUQuota, f.in.HostConfig.CPUPeriod = 200000, 100000 },
			check: func(t *testing.T, f *fakeEngine) {
				require.EqualValues(t, 50000, f.in.HostConfig.CPUQuota)
				require.Zero(t, f.in.HostConfig.NanoCPUs)
			}},
		{name: "limit cpu again", mode: ModeEnforce, action: response.LimitCPU, status: response.StatusDone, reason: "already limited",
			setup: func(f *fakeEngine) { f.in.HostConfig.NanoCPUs = 5e8 }},
		{name: "engine error", mode: ModeEnforce, action: response.Pause, setup: func(f *fakeEngine) { f.fail = errors.New("boom") },
			status: response.StatusFailed, reason: "pause: boom", calls: []string{"pause"}},
		{name: "protected", mode: ModeEnforce, action: response.Kill, labels: map[string]string{"whalewatch.protected": "true"},
			status: response.StatusRefused, reason: "protected by label whalewatch.protected"},
		{name: "protected, any value", mode: ModeEnforce, action: response.Kill, labels: map[string]string{"whalewatch.protected": ""},
			status: response.StatusRefused, reason: "protected by label"},
		{name: "protected=false", mode: ModeEnforce, action: response.Kill, labels: map[string]string{"whalewatch.protected": "False"},
			status: response.StatusDone, calls: []string{"kill KILL"}},
		{name: "custom protected label", mode: ModeEnforce, action: response.Kill, labels: map[string]string{"keep": "1"}, protected: "keep",
			status: response.StatusRefused, reason: "protected by label keep"},
		{name: "component", mode: ModeEnforce, action: response.Stop, labels: map[string]string{ComponentLabel: "true"},
			status: response.StatusRefused, reason: "whalewatch's own container"},
		{name: "self", mode: ModeEnforce, id: selfID, action: response.Stop, status: response.StatusRefused, reason: "the collector's own container"},
		{name: "unknown", mode: ModeEnforce, id: strings.Repeat("b", 64), action: response.Kill, status: response.StatusRefused, reason: "no such container"},
		{name: "expired", mode: ModeEnforce, action: response.Kill, mut: []func(*response.Request){old}, status: response.StatusRefused, reason: "expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			id := victim
			if tt.id != "" {
				id = tt.id
			}
			nets := tt.nets
			if nets == nil {
				nets = []string{"bridge"}
			}
			eng := newFakeEngine(victim, tt.labels, nets...)
			if tt.id == selfID {
				eng = newFakeEngine(selfID, nil, nets...)
			}
			if tt.setup != nil {
				tt.setup(eng)
			}
			r, pub := newTestResponder(t, eng, tt.mode)
			if tt.protected != "" {
				r.cfg.ProtectedLabel = tt.protected
			}
			req := request(t, id, tt.action, tt.mut...)
			require.NoError(t, r.handle(t.Context(), req))

			require.Len(t, pub.got, 1)
			res := pub.got[0]
			require.NoError(t, res.Validate())
			require.Equal(t, "whalewatch.actions.result.h."+id, pub.sub[0])
			require.Equal(t, string(tt.status), res.Whalewatch.Response.Status, res.Whalewatch.Response.Reason)
			require.Contains(t, res.Whalewatch.Response.Reason, tt.reason)
			require.Equal(t, req.Event.ID, res.Whalewatch.Response.Target)
			require.Equal(t, string(tt.action), res.Event.Action)
			require.Equal(t, id, res.Container.ID)
			if tt.status == response.StatusDone || tt.status == response.StatusDryRun {
				require.Equal(t, "success", res.Event.Outcome)
			} else {
				require.Equal(t, "failure", res.Event.Outcome)
			}
			if tt.check != nil {
				tt.check(t, eng)
			} else {
				require.Equal(t, tt.calls, eng.calls)
			}
			require.Equal(t, 1.0, testutil.ToFloat64(r.m.results.WithLabelValues(string(tt.action), string(tt.status))))
		})
	}
}

func TestResponderRefusesInvalidRequests(t *testing.T) {
	t.Parallel()
	eng := newFakeEngine(victim, nil, "bridge")
	r, pub := newTestResponder(t, eng, ModeEnforce)
	byName := request(t, victim, response.Kill)
	byName.Container.ID = "victim" // a name resolves, but is not the id meant
	bad := request(t, victim, response.Kill)
	bad.Whalewatch.Response.Action = "rm"
	short := request(t, victim, response.Kill)
	short.Container.ID = victim[:12]
	for _, e := range []*event.Event{byName, bad, short} {
		e.Event.ID = event.NewID() // three requests, not one redelivered
		require.NoError(t, r.handle(t.Context(), e))
	}
	require.Len(t, pub.got, 3)
	for _, res := range pub.got {
		require.Equal(t, string(response.StatusRefused), res.Whalewatch.Response.Status)
		require.Contains(t, res.Whalewatch.Response.Reason, "invalid request")
	}
	require.Empty(t, eng.calls)
	require.Equal(t, 1.0, testutil.ToFloat64(r.m.results.WithLabelValues("invalid", response.StatusRefused)))
}

func TestResponderActsOncePerRequest(t *testing.T) {
	t.Parallel()
	eng := newFakeEngine(victim, nil, "bridge")
	r, pub := newTestResponder(t, eng, ModeEnforce)
	req := request(t, victim, response.Pause)
	require.NoError(t, r.handle(t.Context(), req))
	eng.in.State.Paused = false // an operator unpaused it; the request must not pause it again
	require.NoError(t, r.handle(t.Context(), req))

	require.Equal(t, []string{"pause"}, eng.calls)
	require.Len(t, pub.got, 1, "the result is published once")
	require.Equal(t, string(response.StatusDone), pub.got[0].Whalewatch.Response.Status)
	require.Equal(t, 1.0, testutil.ToFloat64(r.m.replays))
	require.Equal(t, 1.0, testutil.ToFloat64(r.m.results.WithLabelValues(string(response.Pause), string(response.StatusDone))))
}

func TestResponseConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{"defaults", func(*Config) {}, ""},
		{"enforce", func(c *Config) { c.Mode = ModeEnforce }, ""},
		{"off", func(c *Config) { c.Mode = ModeOff }, ""},
		{"bad mode", func(c *Config) { c.Mode = "yolo" }, `response-mode "yolo"`},
		{"no label", func(c *Config) { c.ProtectedLabel = "" }, "protected-label must not be empty"},
		{"negative age", func(c *Config) { c.MaxAge = -1 }, "response-max-age"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig(t)
			require.Equal(t, ModeDryRun, cfg.Mode, "dry-run is the default")
			tt.mutate(&cfg)
			err := cfg.Validate()
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
}

func TestSelfContainerID(t *testing.T) {
	t.Parallel()
	const id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct {
		name              string
		cgroup, mountinfo string
		want              string
	}{
		{"cgroup v1", "12:memory:/docker/" + id + "\n0::/\n", "", id},
		{"systemd scope", "0::/system.slice/docker-" + id + ".scope\n", "", id},
		{"cgroup v2 private namespace", "0::/\n",
			"612 600 8:1 /var/lib/docker/containers/" + id + "/hostname /etc/hostname rw,relatime - ext4 /dev/sda1 rw\n", id},
		{"on the host", "0::/user.slice\n", "25 1 8:1 / / rw - ext4 /dev/sda1 rw\n", ""},
		{"not an id", "0::/docker/" + id[:63] + "x\n", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			files := map[string]string{"/proc/self/cgroup": tt.cgroup, "/proc/self/mountinfo": tt.mountinfo}
			got := selfContainerID(func(p string) ([]byte, error) { return []byte(files[p]), nil })
			require.Equal(t, tt.want, got)
		})
	}
}

func TestDurableToken(t *testing.T) {
	t.Parallel()
	require.Equal(t, "web_example_com", durableToken("web.example.com"))
	require.Equal(t, "a_b_c", durableToken(`a/b\c`))
}

func TestResponderOffConsumesNothing(t *testing.T) {
	t.Parallel()
	r, _ := newTestResponder(t, newFakeEngine(victim, nil), ModeOff)
	r.claims = nil // would be opened on NATS (r.js is nil: it must not be touched)
	require.NoError(t, r.Run(t.Context()))
}

func testConfig(t *testing.T) Config {
	t.Helper()
	var cfg Config
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	require.NoError(t, fs.Parse(nil))
	return cfg
}

// A request whose claim another attempt holds is retried later (an error:
// nak), with nothing done or published meanwhile.
func TestResponderWaitsForAHeldClaim(t *testing.T) {
	t.Parallel()
	eng := newFakeEngine(victim, nil, "bridge")
	r, pub := newTestResponder(t, eng, ModeEnforce)
	req := request(t, victim, response.Pause)
	r.claims.(*memClaims).m[req.Event.ID] = claim.Held
	require.Error(t, r.handle(t.Context(), req))
	require.Empty(t, eng.calls)
	require.Empty(t, pub.got)
}
