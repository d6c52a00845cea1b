package state

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
)

func execPID(cid string, at time.Time, pid, ppid int, args ...string) *event.Event {
	e := ev(cid, event.TelemetryProcess, at)
	e.Process = &event.Process{PID: pid, Name: args[0], Executable: args[0], Args: args, Parent: &event.Parent{PID: ppid}}
	return e
}

func config(cid string, at time.Time, healthcheck ...string) *event.Event {
	e := ev(cid, event.TelemetryConfig, at)
	e.Whalewatch.Config = &event.ContainerConfig{Healthcheck: healthcheck}
	return e
}

var execPIDs atomic.Int64

// dockerExec is a docker exec's exec_start; each has its own pid.
func dockerExec(cid string, at time.Time, args ...string) *event.Event {
	e := ev(cid, event.TelemetryLifecycle, at)
	e.Event.Action = "exec_start"
	e.Process = &event.Process{PID: 900 + int(execPIDs.Add(1)), Args: args, Name: args[0]}
	return e
}

func TestHealthcheckRemembered(t *testing.T) {
	t.Parallel()
	r := newRecorder(t, testConfig(t), &clock{t0})
	s := r.Observe(dockerExec("c1", t0, "sh", "-c", "wget -q -O- 127.0.0.1"))
	require.False(t, s.ConfigKnown)
	require.False(t, s.Healthcheck)

	r.Observe(config("c1", t0, "CMD-SHELL", "wget -q -O- 127.0.0.1"))
	r.Observe(config("c2", t0, "CMD", "/bin/check", "--quick"))
	for _, tc := range []struct {
		cid  string
		args []string
		want bool
	}{
		{"c1", []string{"/bin/sh", "-c", "wget -q -O- 127.0.0.1"}, true},
		{"c1", []string{"sh", "-c", "wget -q -O- 127.0.0.1"}, true},
		{"c1", []string{"sh", "-c", "wget -q -O- 127.0.0.1; id"}, false},
		{"c1", []string{"bash", "-c", "wget -q -O- 127.0.0.1"}, false},
		{"c2", []string{"/bin/check", "--quick"}, true},
		{"c2", []string{"/bin/check"}, false},
		{"c2", []string{"sh", "-c", "/bin/check --quick"}, false},
	} {
		s := r.Observe(dockerExec(tc.cid, t0, tc.args...))
		require.True(t, s.ConfigKnown)
		require.Equal(t, tc.want, s.Healthcheck, "%s %q", tc.cid, tc.args)
	}
	// The same process as process telemetry is the health check too, and
	// so is what it runs: forked, or exec'd in its place.
	e := execPID("c1", t0, 5, 1, "/bin/sh", "-c", "wget -q -O- 127.0.0.1")
	require.True(t, r.Observe(e).Healthcheck)
	require.True(t, r.Observe(execPID("c1", t0, 6, 5, "wget", "-q", "-O-", "127.0.0.1")).Healthcheck, "child")
	require.True(t, r.Observe(execPID("c1", t0, 7, 6, "nc", "-z", "127.0.0.1", "80")).Healthcheck, "grandchild")
	require.True(t, r.Observe(execPID("c1", t0, 5, 1, "wget", "-q", "-O-", "127.0.0.1")).Healthcheck, "exec in place")
	require.False(t, r.Observe(execPID("c1", t0, 8, 1, "wget", "-q", "-O-", "127.0.0.1")).Healthcheck, "the same command elsewhere")
	ev, _ := r.Evidence("c1", 0)
	require.Contains(t, ev.Processes, "8 wget -q -O- 127.0.0.1")
	for _, x := range ev.Processes {
		for _, hc := range []string{"5 ", "6 ", "7 "} {
			require.False(t, strings.HasPrefix(x, hc), "health checks are not evidence: %s", x)
		}
	}
}

func TestParentServesNetwork(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.BaselineLearning = time.Minute
	clk := &clock{t0}
	r := newRecorder(t, cfg, clk)

	// While the image learns, its web server listens on 80.
	web := execPID("c1", t0, 10, 1, "/usr/sbin/httpd", "-f")
	r.Observe(web)
	l := listen("c1", t0, 80)
	l.Process = &event.Process{PID: 10}
	r.Observe(l)

	clk.t = t0.Add(2 * time.Minute) // learning over
	at := t0.Add(2 * time.Minute)
	// A program of the container listens on a new port, and a shell is its child.
	r.Observe(execPID("c1", at, 20, 1, "/tmp/svc"))
	acc := listen("c1", at, 31337)
	acc.Whalewatch.Socket.State = "accept"
	acc.Process = &event.Process{PID: 20}
	require.False(t, r.Observe(acc).NewListenPort, "accept is not a new listen")
	s := r.Observe(execPID("c1", at, 21, 20, "/bin/sh", "-i"))
	require.True(t, s.ParentServesNetwork)
	require.False(t, s.ParentKnownService)

	// The web server's child: served by the image's known service.
	s = r.Observe(execPID("c1", at, 11, 10, "/bin/sh", "-c", "cgi"))
	require.True(t, s.ParentServesNetwork)
	require.True(t, s.ParentKnownService)

	// An exec replacing the listener's program keeps it a listener.
	r.Observe(execPID("c1", at, 20, 1, "/bin/busybox"))
	require.True(t, r.Observe(execPID("c1", at, 22, 20, "/bin/sh")).ParentServesNetwork)

	// Not a listener's child; other containers know nothing of c1's pids.
	require.False(t, r.Observe(execPID("c1", at, 30, 1, "/bin/sh")).ParentServesNetwork)
	require.False(t, r.Observe(execPID("c2", at, 21, 20, "/bin/sh")).ParentServesNetwork)

	// An exited listener is forgotten.
	end := ev("c1", event.TelemetryProcess, at)
	end.Event.Type = []string{"end"}
	end.Process = &event.Process{PID: 20}
	r.Observe(end)
	require.False(t, r.Observe(execPID("c1", at, 23, 20, "/bin/sh")).ParentServesNetwork)
}

func TestEvidenceAndAncestry(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.EvidenceItems = 3
	r := newRecorder(t, cfg, &clock{t0})
	r.Observe(execPID("c1", t0, 1, 0, "/bin/sh", "/entrypoint.sh"))
	r.Observe(execPID("c1", t0, 2, 1, "/usr/bin/python3", "app.py"))
	r.Observe(execPID("c1", t0, 3, 2, "/bin/sh", "-c", "id"))
	for i := range 5 {
		l := ev("c1", event.TelemetryLog, t0)
		l.Whalewatch.Log = &event.LogBatch{Stream: "stdout", Lines: []string{fmt.Sprintf("line %d", i)}}
		r.Observe(l)
	}
	f := ev("c1", event.TelemetryFile, t0)
	f.File = &event.File{Path: "/tmp/x", TargetPath: "/etc/passwd"}
	f.Whalewatch.FileChange = &event.FileChange{Operation: "rename"}
	r.Observe(f)
	c := connect("c1", t0, "127.0.0.1", 22)
	c.Whalewatch.Socket.State = "connect"
	c.Event.Outcome = "failure"
	r.Observe(c)
	hc := config("c1", t0, "CMD", "true")
	r.Observe(hc)
	r.Observe(dockerExec("c1", t0, "true")) // the health check: not evidence

	ev, anc := r.Evidence("c1", 3)
	require.Equal(t, []string{"line 2", "line 3", "line 4"}, ev.LogLines, "the last lines, oldest first")
	require.Equal(t, []string{"rename /tmp/x -> /etc/passwd"}, ev.FileChanges)
	require.Equal(t, []string{"connect 127.0.0.1:22 tcp (refused)"}, ev.Connections)
	require.Equal(t, []string{"1 /bin/sh /entrypoint.sh", "2 /usr/bin/python3 app.py", "3 /bin/sh -c id"}, ev.Processes)
	require.Equal(t, []event.Ancestor{
		{PID: 2, Name: "/usr/bin/python3", Executable: "/usr/bin/python3", CommandLine: "/usr/bin/python3 app.py"},
		{PID: 1, Name: "/bin/sh", Executable: "/bin/sh", CommandLine: "/bin/sh /entrypoint.sh"},
	}, anc)

	// Rename into place counts as the target being dropped.
	require.True(t, r.Observe(execPID("c1", t0, 4, 1, "/etc/passwd")).ExecOfDroppedFile)

	none, anc := r.Evidence("unknown", 3)
	require.Nil(t, none)
	require.Nil(t, anc)

	// A cycle of reused pids ends the walk.
	r.Observe(execPID("c9", t0, 5, 6, "/a"))
	r.Observe(execPID("c9", t0, 6, 5, "/b"))
	_, anc = r.Evidence("c9", 5)
	require.Len(t, anc, 1)
}

func TestBehaviourBounded(t *testing.T) {
	t.Parallel()
	r := newRecorder(t, testConfig(t), &clock{t0})
	long := string(make([]byte, 10_000))
	for i := range 1000 {
		e := execPID("c1", t0, 100+i, 1, "/bin/x", long)
		r.Observe(e)
		l := listen("c1", t0, 1000+i)
		l.Process = &event.Process{PID: 100000 + i}
		r.Observe(l)
	}
	r.mu.Lock()
	c := r.containers["c1"].Value.(*container)
	require.LessOrEqual(t, len(c.procs), maxProcesses)
	require.LessOrEqual(t, len(c.execs.items), r.cfg.EvidenceItems)
	for _, it := range c.execs.items {
		require.LessOrEqual(t, len(it), maxEvidenceText)
	}
	for _, p := range c.procs {
		require.LessOrEqual(t, len(p.commandLine), maxEvidenceText)
	}
	r.mu.Unlock()
}

func TestSustainedCPUIrregularSamples(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.BaselineLearning = 0
	r := newRecorder(t, cfg, &clock{t0})
	r.Observe(execPID("c1", t0, 5, 1, "/tmp/kworker", "-q"))
	sample := func(at time.Duration, interval, cpu float64) Snapshot {
		e := resource("c1", t0.Add(at), cpu, 0, 0)
		e.Whalewatch.Resource.IntervalSeconds = interval
		return r.Observe(e)
	}
	// Sampled every 30 s while quiet, every ~5 s once busy.
	require.Zero(t, sample(30*time.Second, 30, 3).CPUHighSeconds)
	s := sample(40*time.Second, 10, 99)
	require.InDelta(t, 10, s.CPUHighSeconds, 0.001)
	require.Equal(t, "/tmp/kworker", s.CPUTopProcess)
	s = sample(45*time.Second, 5, 98)
	s = sample(52*time.Second, 7, 97)
	s = sample(56*time.Second, 4, 99)
	require.InDelta(t, 26, s.CPUHighSeconds, 0.001)
	// Samples lost for two minutes: the run starts again.
	s = sample(176*time.Second, 5, 99)
	require.InDelta(t, 5, s.CPUHighSeconds, 0.001)
	// A dip of 5 s does not end the run.
	sample(181*time.Second, 5, 60)
	s = sample(186*time.Second, 5, 99)
	require.InDelta(t, 15, s.CPUHighSeconds, 0.001)
	// Calm for more than 10 s does; then a burst of 8 s is 8 s.
	sample(192*time.Second, 6, 2)
	require.Zero(t, sample(198*time.Second, 6, 2).CPUHighSeconds)
	s = sample(203*time.Second, 5, 99)
	s = sample(206*time.Second, 3, 99)
	require.InDelta(t, 8, s.CPUHighSeconds, 0.001)
}

func TestIncidents(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.IncidentWindow = 10 * time.Minute
	r := newRecorder(t, cfg, &clock{t0})
	type step struct {
		cid, rule string
		at        time.Duration
		publish   bool
		count     int
		rules     []string
		sameAs    int // index of the step whose incident this one shares; -1: a new one
	}
	steps := []step{
		{"c1", "dropped", 0, true, 1, []string{"dropped"}, -1},
		{"c1", "exec-tmp", time.Second, true, 2, []string{"dropped", "exec-tmp"}, 0},
		{"c1", "exec-tmp", 2 * time.Second, false, 3, []string{"dropped", "exec-tmp"}, 0},
		{"c2", "exec-tmp", 2 * time.Second, true, 1, []string{"exec-tmp"}, -1},
		{"c1", "fanout", 9 * time.Minute, true, 4, []string{"dropped", "exec-tmp", "fanout"}, 0},
		{"c1", "fanout", 18 * time.Minute, false, 5, []string{"dropped", "exec-tmp", "fanout"}, 0}, // window slides
		{"c1", "fanout", 40 * time.Minute, true, 1, []string{"fanout"}, -1},
		{"", "docker-api", 0, true, 1, []string{"docker-api"}, -1},
		{"", "docker-api", time.Minute, false, 2, []string{"docker-api"}, 7},
	}
	var ids []string
	for i, s := range steps {
		inc, publish := r.Incident("h", s.cid, s.rule, fmt.Sprintf("threat-%d", i), t0.Add(s.at))
		require.Equal(t, s.publish, publish, "step %d", i)
		require.Equal(t, s.count, inc.Count, "step %d", i)
		require.Equal(t, s.rules, inc.Rules, "step %d", i)
		if s.sameAs >= 0 {
			require.Equal(t, ids[s.sameAs], inc.ID, "step %d", i)
		} else {
			require.NotContains(t, ids, inc.ID, "step %d", i)
		}
		ids = append(ids, inc.ID)
	}
	// Derived: the same first threat gives the same incident id.
	r2 := newRecorder(t, cfg, &clock{t0})
	inc, _ := r2.Incident("h", "c1", "dropped", "threat-0", t0)
	require.Equal(t, ids[0], inc.ID)

	// A threat that could not be published is published on redelivery.
	inc, publish := r2.Incident("h", "c1", "nc", "t1", t0)
	require.True(t, publish)
	r2.Unpublished("h", "c1", "nc")
	inc2, publish := r2.Incident("h", "c1", "nc", "t1", t0)
	require.True(t, publish)
	require.Equal(t, inc.Count, inc2.Count)

	// Window 0: every threat alone.
	cfg.IncidentWindow = 0
	r3 := newRecorder(t, cfg, &clock{t0})
	for range 2 {
		inc, publish := r3.Incident("h", "c1", "nc", "t", t0)
		require.True(t, publish)
		require.Equal(t, 1, inc.Count)
	}
}
