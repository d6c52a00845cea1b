package dockerevents

import (
	"bufio"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/subject"
)

// recordedEvents reads testdata/events.jsonl: the event stream of engine
// 20.10 while a container ran, got two execs (nc; sh -c 'exit 3' as uid
// 1000), an image was tagged and untagged, and the container was removed.
func recordedEvents(t testing.TB) []events.Message {
	t.Helper()
	f, err := os.Open("testdata/events.jsonl")
	require.NoError(t, err)
	defer f.Close()
	var out []events.Message
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m events.Message
		require.NoError(t, json.Unmarshal(sc.Bytes(), &m))
		out = append(out, m)
	}
	require.NoError(t, sc.Err())
	return out
}

func findEvent(t testing.TB, ms []events.Message, typ events.Type, action string) events.Message {
	t.Helper()
	for _, m := range ms {
		if m.Type == typ && string(m.Action) == action {
			return m
		}
	}
	t.Fatalf("no %s %q in recording", typ, action)
	return events.Message{}
}

func TestSplitAction(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, verb, detail string }{
		{"start", "start", ""},
		{"exec_start: nc -l -p 4444", "exec_start", "nc -l -p 4444"},
		{"exec_start: sh -c a: b", "exec_start", "sh -c a: b"},
		{"health_status: healthy", "health_status", "healthy"},
		{"exec_die", "exec_die", ""},
		{"", "", ""},
	}
	for _, tt := range tests {
		verb, detail := SplitAction(tt.in)
		require.Equal(t, tt.verb, verb, tt.in)
		require.Equal(t, tt.detail, detail, tt.in)
	}
}

func TestLifecycleEventsFromRecording(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 5, 11, 0, 0, 0, 0, time.UTC)
	ms := recordedEvents(t)
	tests := []struct {
		typ      events.Type
		action   string
		category string
		typ2     string
		verb     string
	}{
		{events.ContainerEventType, "create", "configuration", "creation", "create"},
		{events.ContainerEventType, "start", "process", "start", "start"},
		{events.ContainerEventType, "exec_create: nc -l -p 4444", "process", "info", "exec_create"},
		{events.ContainerEventType, "exec_start: nc -l -p 4444", "process", "start", "exec_start"},
		{events.ContainerEventType, "exec_die", "process", "end", "exec_die"},
		{events.ContainerEventType, "kill", "process", "end", "kill"},
		{events.ContainerEventType, "die", "process", "end", "die"},
		{events.ContainerEventType, "destroy", "configuration", "deletion", "destroy"},
		{events.ImageEventType, "tag", "package", "change", "tag"},
		{events.ImageEventType, "untag", "package", "deletion", "untag"},
		{events.NetworkEventType, "connect", "network", "start", "connect"},
		{events.NetworkEventType, "disconnect", "network", "end", "disconnect"},
	}
	for _, tt := range tests {
		m := findEvent(t, ms, tt.typ, tt.action)
		var ctr *event.Container
		if tt.typ == events.ContainerEventType {
			ctr = ContainerFromAttributes(m.Actor.ID, m.Actor.Attributes)
		}
		e := LifecycleEvent("host-1", m, ctr, now)
		require.NoError(t, e.Validate(), tt.action)
		require.Equal(t, []string{tt.category}, e.Event.Category, tt.action)
		require.Equal(t, []string{tt.typ2}, e.Event.Type, tt.action)
		require.Equal(t, tt.verb, e.Event.Action)
		require.Equal(t, event.TelemetryLifecycle, e.Whalewatch.Telemetry)
		require.Equal(t, "whalewatch.lifecycle", e.Event.Dataset)
		require.Equal(t, time.Unix(0, m.TimeNano).UTC(), e.Timestamp)
		require.Equal(t, now, e.Event.Created)
		require.Equal(t, e.Event.ID, LifecycleEvent("host-1", m, ctr, now.Add(time.Hour)).Event.ID, "a re-read event keeps its id")
		require.NotEqual(t, e.Event.ID, LifecycleEvent("host-2", m, ctr, now).Event.ID)
		if ctr != nil {
			require.Equal(t, "whalewatch.telemetry.host-1."+m.Actor.ID+".lifecycle", subject.ForTelemetry(e))
		} else {
			require.Equal(t, "whalewatch.telemetry.host-1._host.lifecycle", subject.ForTelemetry(e))
		}
	}
}

func TestContainerFromAttributes(t *testing.T) {
	t.Parallel()
	m := findEvent(t, recordedEvents(t), events.ContainerEventType, "die")
	c := ContainerFromAttributes(m.Actor.ID, m.Actor.Attributes)
	require.Equal(t, &event.Container{
		ID:     "4c7026ba107a03cf43fbfd4d844b4848215f9d672d573bddbd21e047a0b62291",
		Name:   "ww-record-events",
		Image:  event.Image{Name: "whalewatch-test/busybox", Tag: []string{"1"}},
		Labels: map[string]string{"app": "web", "whalewatch.test": "record"},
	}, c)
}

func TestExecProcess(t *testing.T) {
	t.Parallel()
	cfg := func(entry string, args []string, user string, privileged bool) *ExecDetails {
		return &ExecDetails{Pid: 4242, ProcessConfig: &ExecProcessConfig{
			Entrypoint: entry, Arguments: args, User: user, Privileged: &privileged,
		}}
	}
	tests := []struct {
		name     string
		detail   string
		ex       *ExecDetails
		userSpec string
		want     *event.Process
	}{
		{
			name:   "from exec inspect, busybox applet",
			detail: "nc -l -p 4444",
			ex:     cfg("nc", []string{"-l", "-p", "4444"}, "", false),
			want: &event.Process{
				PID: 4242, Name: "nc", CommandLine: "nc -l -p 4444",
				Args: []string{"nc", "-l", "-p", "4444"}, ArgsCount: 4,
				User: &event.User{ID: "0", Name: "root"},
			},
		},
		{
			name:     "exact argv and exec user win over the detail and the container user",
			detail:   "sh -c exit 3",
			ex:       cfg("/bin/sh", []string{"-c", "exit 3"}, "1000:1000", false),
			userSpec: "nobody",
			want: &event.Process{
				PID: 4242, Name: "sh", Executable: "/bin/sh", CommandLine: "/bin/sh -c exit 3",
				Args: []string{"/bin/sh", "-c", "exit 3"}, ArgsCount: 3,
				User: &event.User{ID: "1000"},
			},
		},
		{
			name:     "container user when the exec asked for none",
			ex:       cfg("id", nil, "", false),
			userSpec: "www-data:www-data",
			want: &event.Process{
				PID: 4242, Name: "id", CommandLine: "id", Args: []string{"id"}, ArgsCount: 1,
				User: &event.User{Name: "www-data"},
			},
		},
		{
			name:   "fallback: the action's detail",
			detail: "nc  -l -p 4444",
			want: &event.Process{
				Name: "nc", CommandLine: "nc  -l -p 4444", Args: []string{"nc", "-l", "-p", "4444"}, ArgsCount: 4,
			},
		},
		{
			name: "fallback without detail",
			want: &event.Process{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, ExecProcess(tt.detail, tt.ex, tt.userSpec))
		})
	}
}

func TestUserFromSpec(t *testing.T) {
	t.Parallel()
	require.Equal(t, &event.User{ID: "0", Name: "root"}, userFromSpec(""))
	require.Equal(t, &event.User{ID: "1000"}, userFromSpec("1000"))
	require.Equal(t, &event.User{ID: "1000"}, userFromSpec("1000:50"))
	require.Equal(t, &event.User{Name: "nginx"}, userFromSpec("nginx:nginx"))
	require.Equal(t, &event.User{Name: "root"}, userFromSpec("root"))
}

// FuzzExecAction: the action of an exec event is whatever the exec's argv
// was. The lifecycle event built from it must be valid once bounded.
func FuzzExecAction(f *testing.F) {
	f.Add("exec_start: nc -l -p 4444")
	f.Add("exec_start: " + strings.Repeat("A", 10000))
	f.Add("exec_start: \xff\xfe \x00 \n\t: : :")
	f.Add("exec_create:")
	f.Add(": ")
	f.Fuzz(func(t *testing.T, action string) {
		m := events.Message{Type: events.ContainerEventType, Action: events.Action(action), TimeNano: 1,
			Actor: events.Actor{ID: "c1", Attributes: map[string]string{"name": "x", "image": action}}}
		verb, detail := SplitAction(action)
		e := LifecycleEvent("host", m, ContainerFromAttributes("c1", m.Actor.Attributes), time.Unix(0, 0))
		if strings.HasPrefix(verb, "exec_") {
			e.Process = ExecProcess(detail, nil, "")
		}
		e.Bound()
		if err := e.Validate(); err != nil {
			t.Fatalf("action %q: %v", action, err)
		}
		if _, err := event.Decode(mustMarshal(t, e)); err != nil {
			t.Fatalf("action %q: round trip: %v", action, err)
		}
	})
}

func mustMarshal(t testing.TB, e *event.Event) []byte {
	t.Helper()
	b, err := event.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func BenchmarkLifecycleExecEvent(b *testing.B) {
	m := findEvent(b, recordedEvents(b), events.ContainerEventType, "exec_start: nc -l -p 4444")
	_, detail := SplitAction(string(m.Action))
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		e := LifecycleEvent("host", m, ContainerFromAttributes(m.Actor.ID, m.Actor.Attributes), now)
		e.Process = ExecProcess(detail, nil, "")
		e.Bound()
	}
}
