// Package dockerevents is the lifecycle source: the Docker engine's event
// stream (containers, images, networks), followed with reconnection, and
// its mapping to lifecycle telemetry. The collector's container set is the
// Handler the stream drives.
package dockerevents

import (
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/events"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/services/collector/internal/source"
)

// SplitAction splits a Docker event action into its verb and detail:
// "exec_start: nc -l -p 4444" is ("exec_start", "nc -l -p 4444"),
// "health_status: healthy" is ("health_status", "healthy").
func SplitAction(a string) (verb, detail string) {
	verb, detail, _ = strings.Cut(a, ": ")
	return strings.TrimSpace(verb), detail
}

// EventTime is when Docker says m happened.
func EventTime(m events.Message) time.Time {
	if m.TimeNano != 0 {
		return time.Unix(0, m.TimeNano).UTC()
	}
	return time.Unix(m.Time, 0).UTC()
}

// lifecycleID is stable across re-reads of the same Docker event (a
// reconnect with Since replays some), so JetStream stores it once.
func lifecycleID(host string, m events.Message) string {
	return event.DeriveID(host, "docker", m.Actor.ID, string(m.Action), strconv.FormatInt(EventTime(m).UnixNano(), 10))
}

// ecsKind maps a Docker event to ECS event.category and event.type, using
// only the values ECS allows together.
func ecsKind(typ events.Type, verb string) (category, types []string) {
	c := func(cat string, types ...string) ([]string, []string) { return []string{cat}, types }
	switch typ {
	case events.ContainerEventType:
		switch verb {
		case "create":
			return c("configuration", "creation")
		case "destroy":
			return c("configuration", "deletion")
		case "update", "rename":
			return c("configuration", "change")
		case "start", "restart", "exec_start":
			return c("process", "start")
		case "die", "kill", "stop", "oom", "exec_die":
			return c("process", "end")
		case "pause", "unpause":
			return c("process", "change")
		case "exec_create", "exec_detach", "attach", "detach", "health_status":
			return c("process", "info")
		}
		return c("host", "info")
	case events.ImageEventType:
		switch verb {
		case "pull", "import", "load":
			return c("package", "installation")
		case "delete", "untag":
			return c("package", "deletion")
		case "tag":
			return c("package", "change")
		}
		return c("package", "info")
	case events.NetworkEventType:
		switch verb {
		case "connect":
			return c("network", "start")
		case "disconnect":
			return c("network", "end")
		}
		return c("network", "info")
	}
	return c("host", "info")
}

// LifecycleEvent builds the lifecycle telemetry of Docker event m. ctr is the
// container it concerns, nil for host-scoped events (images, networks
// without a container).
func LifecycleEvent(host string, m events.Message, ctr *event.Container, now time.Time) *event.Event {
	verb, detail := SplitAction(string(m.Action))
	cat, typ := ecsKind(m.Type, verb)
	e := &event.Event{
		Timestamp: EventTime(m),
		Event: event.Meta{
			ID:       lifecycleID(host, m),
			Kind:     event.KindEvent,
			Category: cat,
			Type:     typ,
			Action:   verb,
			Dataset:  event.TelemetryLifecycle.Dataset(),
			Module:   event.Module,
			Created:  now.UTC(),
		},
		Host:      event.Host{Name: host},
		Container: ctr,
		Whalewatch: event.Whalewatch{
			SchemaVersion: event.SchemaVersion,
			Telemetry:     event.TelemetryLifecycle,
		},
	}
	e.Message = lifecycleMessage(m, verb, detail, ctr)
	return e
}

func lifecycleMessage(m events.Message, verb, detail string, ctr *event.Container) string {
	var b strings.Builder
	b.WriteString(string(m.Type))
	b.WriteByte(' ')
	b.WriteString(verb)
	switch {
	case ctr != nil && ctr.Name != "":
		b.WriteString(" " + ctr.Name)
	case ctr != nil:
		b.WriteString(" " + shortID(ctr.ID))
	case m.Actor.Attributes["name"] != "":
		b.WriteString(" " + m.Actor.Attributes["name"])
	default:
		b.WriteString(" " + m.Actor.ID)
	}
	if m.Type == events.NetworkEventType && ctr != nil {
		b.WriteString(" network " + m.Actor.Attributes["name"])
	}
	if detail != "" {
		b.WriteString(": " + detail)
	}
	if code, ok := m.Actor.Attributes["exitCode"]; ok {
		b.WriteString(" (exit code " + code + ")")
	}
	return b.String()
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// ContainerFromAttributes is container.* when the collector has not
// inspected the container (it was never seen running, or is gone): a
// container event's attributes are its labels plus name, image and the
// event's own keys.
func ContainerFromAttributes(id string, attrs map[string]string) *event.Container {
	c := &event.Container{ID: id, Name: attrs["name"], Image: source.ParseImageRef(attrs["image"])}
	for k, v := range attrs {
		if nonLabelAttributes[k] {
			continue
		}
		if c.Labels == nil {
			c.Labels = map[string]string{}
		}
		c.Labels[k] = v
	}
	return c
}

// nonLabelAttributes are the attributes the engine adds to container events.
var nonLabelAttributes = map[string]bool{
	"name": true, "image": true, "exitCode": true, "execID": true, "signal": true, "oldName": true,
}

// ExecProcess builds process.* of an exec_* event. ex is the engine's exec
// record when it could be read: it has the exact argv and user. Otherwise the
// command is the event's detail, which Docker built by joining argv with
// spaces (so an argument containing a space cannot be told apart), and the
// user is unknown. userSpec is the container's configured user, the exec's
// user when it did not ask for one.
func ExecProcess(detail string, ex *ExecDetails, userSpec string) *event.Process {
	p := &event.Process{}
	if ex != nil && ex.ProcessConfig != nil {
		pc := ex.ProcessConfig
		p.Args = append([]string{pc.Entrypoint}, pc.Arguments...)
		p.CommandLine = strings.Join(p.Args, " ")
		if path.IsAbs(pc.Entrypoint) {
			p.Executable = pc.Entrypoint
		}
		if ex.Pid > 0 {
			p.PID = ex.Pid
		}
		spec := pc.User
		if spec == "" {
			spec = userSpec
		}
		p.User = userFromSpec(spec)
	} else {
		p.CommandLine = detail
		if f := strings.Fields(detail); len(f) > 0 {
			p.Args = f
		}
	}
	p.ArgsCount = len(p.Args)
	if len(p.Args) > 0 {
		p.Name = source.ProcessName(p.Args[0])
	}
	return p
}

// userFromSpec maps a Docker user spec ("uid[:gid]" or "name[:group]") to
// process.user. The engine runs a container without one as root.
func userFromSpec(spec string) *event.User {
	u, _, _ := strings.Cut(spec, ":")
	switch {
	case u == "":
		return &event.User{ID: "0", Name: "root"}
	case isDigits(u):
		return &event.User{ID: u}
	default:
		return &event.User{Name: u}
	}
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// ExecDetails is the engine's answer to GET /exec/{id}/json.
type ExecDetails struct {
	ID            string
	ContainerID   string
	Running       bool
	Pid           int // in the host's PID namespace; 0 once the exec ended
	ProcessConfig *ExecProcessConfig
}

// ExecProcessConfig is what the exec runs: argv is Entrypoint + Arguments.
type ExecProcessConfig struct {
	Tty        bool     `json:"tty"`
	Entrypoint string   `json:"entrypoint"`
	Arguments  []string `json:"arguments"`
	Privileged *bool    `json:"privileged"`
	User       string   `json:"user"` // as given to docker exec -u; empty: the container's
}
