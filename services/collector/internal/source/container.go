// Package source is the contract between the collector and its sources:
// what the collector knows of a container (Container, from inspect), and the
// two shapes a source takes (PerContainer, Host). Every source lives in a
// package of its own below this one.
package source

import (
	"encoding/json"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/go-connections/nat"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// Container is what the collector keeps about a container, from inspect.
// It is never modified once built: a rename or update replaces it.
type Container struct {
	ID        string
	Name      string
	Image     event.Image
	Labels    map[string]string
	Runtime   string
	User      string // Config.User: the image's USER unless run with -u
	Running   bool
	StartedAt time.Time
	Config    event.ContainerConfig
	// InitPID is the host pid of the container's first process (0 when not
	// running); TTY says its output is a raw stream, not stdcopy frames;
	// CPULimitCores is its CPU limit in cores (NanoCPUs or quota/period), 0
	// when unlimited. Read by the resource, log, file and socket monitors.
	InitPID       int
	TTY           bool
	CPULimitCores float64
	// LogDriver is the container's log driver ("json-file", "local", ...);
	// LogPath the json-file driver's file on the engine's host (empty for
	// other drivers). The log source reads that file when it can.
	LogDriver string
	LogPath   string
	// UpperDir is the writable layer's directory on the host when the
	// storage driver says (overlay2); empty otherwise (vfs: see the
	// fanotify source's layout).
	UpperDir string
}

// ECS returns container.* for one event. Slices and maps are copied: Bound
// shortens them in place, and events are bounded on several goroutines.
func (ci *Container) ECS() *event.Container {
	img := ci.Image
	img.Tag = slices.Clone(img.Tag)
	if img.Hash != nil {
		img.Hash = &event.ImageHash{All: slices.Clone(img.Hash.All)}
	}
	return &event.Container{
		ID:      ci.ID,
		Name:    ci.Name,
		Image:   img,
		Labels:  maps.Clone(ci.Labels),
		Runtime: ci.Runtime,
	}
}

// ConfigSnapshot returns a copy of the configuration snapshot for one event.
func (ci *Container) ConfigSnapshot() *event.ContainerConfig {
	c := ci.Config
	c.CapAdd = slices.Clone(c.CapAdd)
	c.SecurityOpt = slices.Clone(c.SecurityOpt)
	c.Entrypoint = slices.Clone(c.Entrypoint)
	c.Cmd = slices.Clone(c.Cmd)
	c.Healthcheck = slices.Clone(c.Healthcheck)
	c.Mounts = slices.Clone(c.Mounts)
	c.PublishedPorts = slices.Clone(c.PublishedPorts)
	c.Devices = slices.Clone(c.Devices)
	return &c
}

// FromInspect maps an inspect answer. Every pointer in it may be nil: the
// engine omits what it does not know.
func FromInspect(in container.InspectResponse) *Container {
	ci := &Container{}
	if b := in.ContainerJSONBase; b != nil {
		ci.ID = b.ID
		ci.Name = strings.TrimPrefix(b.Name, "/")
		ci.LogPath = b.LogPath
		if g := b.GraphDriver; g.Data != nil {
			ci.UpperDir = g.Data["UpperDir"]
		}
		ci.Config.ImageID = b.Image
		if b.State != nil {
			ci.Running = b.State.Running
			ci.StartedAt, _ = time.Parse(time.RFC3339Nano, b.State.StartedAt)
			ci.InitPID = b.State.Pid
		}
		if h := b.HostConfig; h != nil {
			ci.Runtime = h.Runtime
			ci.LogDriver = h.LogConfig.Type
			mapHostConfig(&ci.Config, h)
			ci.CPULimitCores = cpuLimitCores(h.Resources)
		}
	}
	if c := in.Config; c != nil {
		ci.Image = ParseImageRef(c.Image)
		ci.Labels = c.Labels
		ci.User = c.User
		ci.TTY = c.Tty
		ci.Config.User = c.User
		ci.Config.Entrypoint = c.Entrypoint
		ci.Config.Cmd = c.Cmd
		if hc := c.Healthcheck; hc != nil && len(hc.Test) > 0 && hc.Test[0] != "NONE" {
			ci.Config.Healthcheck = hc.Test
		}
	}
	for _, m := range in.Mounts {
		ci.Config.Mounts = append(ci.Config.Mounts, event.Mount{
			Type:        string(m.Type),
			Source:      m.Source,
			Destination: m.Destination,
			ReadOnly:    !m.RW,
		})
	}
	if b := in.ContainerJSONBase; b != nil && b.HostConfig != nil {
		for _, dest := range slices.Sorted(maps.Keys(b.HostConfig.Tmpfs)) {
			ro := slices.Contains(strings.Split(b.HostConfig.Tmpfs[dest], ","), "ro")
			ci.Config.Mounts = append(ci.Config.Mounts, event.Mount{Type: "tmpfs", Destination: dest, ReadOnly: ro})
		}
	}
	// Ports actually bound (with -P's chosen host ports) when running; the
	// requested bindings otherwise.
	var ports nat.PortMap
	if ns := in.NetworkSettings; ns != nil {
		ports = ns.Ports
	}
	if len(ports) == 0 && in.ContainerJSONBase != nil && in.HostConfig != nil {
		ports = in.HostConfig.PortBindings
	}
	ci.Config.PublishedPorts = publishedPorts(ports)
	return ci
}

func mapHostConfig(c *event.ContainerConfig, h *container.HostConfig) {
	c.Privileged = h.Privileged
	c.CapAdd = h.CapAdd
	c.PIDMode = string(h.PidMode)
	c.NetworkMode = string(h.NetworkMode)
	c.IPCMode = string(h.IpcMode)
	c.ReadonlyRootfs = h.ReadonlyRootfs
	c.SecurityOpt = h.SecurityOpt
	c.NoNewPrivileges = noNewPrivileges(h.SecurityOpt)
	for _, d := range h.Devices {
		c.Devices = append(c.Devices, event.Device{PathOnHost: d.PathOnHost, PathInContainer: d.PathInContainer, Permissions: d.CgroupPermissions})
	}
	c.MemoryLimit = h.Memory
	c.NanoCPUs = h.NanoCPUs
	if h.PidsLimit != nil && *h.PidsLimit > 0 {
		c.PidsLimit = *h.PidsLimit
	}
	if name := string(h.RestartPolicy.Name); name != "" {
		c.RestartPolicy = name
		if h.RestartPolicy.MaximumRetryCount > 0 {
			c.RestartPolicy += ":" + strconv.Itoa(h.RestartPolicy.MaximumRetryCount)
		}
	}
}

// noNewPrivileges reads the security options the engine accepts for it:
// "no-new-privileges", "no-new-privileges:true", "no-new-privileges=true".
// The daemon-wide --no-new-privileges default is not visible in inspect.
func noNewPrivileges(opts []string) bool {
	on := false
	for _, o := range opts {
		k, v, hasValue := strings.Cut(o, ":")
		if !hasValue {
			k, v, hasValue = strings.Cut(o, "=")
		}
		if k != "no-new-privileges" {
			continue
		}
		if !hasValue {
			on = true
			continue
		}
		b, err := strconv.ParseBool(v)
		on = err == nil && b
	}
	return on
}

// publishedPorts lists bindings sorted by container port, then host address,
// so that the same configuration always yields the same document (and id).
func publishedPorts(m nat.PortMap) []event.Port {
	var out []event.Port
	for _, k := range slices.Sorted(maps.Keys(m)) {
		port, proto, ok := strings.Cut(string(k), "/")
		if !ok {
			proto = "tcp"
		}
		for _, b := range m[k] {
			out = append(out, event.Port{HostIP: b.HostIP, HostPort: b.HostPort, ContainerPort: port, Protocol: proto})
		}
	}
	return out
}

// ParseImageRef splits the image a container was created from, as the user
// wrote it ("nginx", "nginx:1.27", "registry:5000/team/app:v2",
// "app@sha256:..."), into ECS container.image.name, .tag and .hash.all. No
// tag is invented: "nginx" has none, although the engine resolved it as
// "latest". An image id (sha256:... or a bare hex prefix) becomes the name.
func ParseImageRef(ref string) event.Image {
	var img event.Image
	if strings.HasPrefix(ref, "sha256:") {
		img.Name = ref
		return img
	}
	name := ref
	if at := strings.LastIndex(name, "@"); at >= 0 {
		img.Hash = &event.ImageHash{All: []string{name[at+1:]}}
		name = name[:at]
	}
	if colon := strings.LastIndex(name, ":"); colon > strings.LastIndex(name, "/") {
		if tag := name[colon+1:]; tag != "" {
			img.Tag = []string{tag}
		}
		name = name[:colon]
	}
	img.Name = name
	return img
}

// ConfigFingerprint identifies a configuration snapshot's content.
func ConfigFingerprint(c *event.ContainerConfig) string {
	b, _ := json.Marshal(c) // plain struct of strings, numbers and slices: cannot fail
	return string(b)
}

// cpuLimitCores is a container's CPU limit in cores: --cpus (NanoCPUs) or
// --cpu-quota/--cpu-period; 0 when unlimited.
func cpuLimitCores(r container.Resources) float64 {
	if r.NanoCPUs > 0 {
		return float64(r.NanoCPUs) / 1e9
	}
	if r.CPUQuota > 0 {
		period := r.CPUPeriod
		if period <= 0 {
			period = 100000 // the kernel's default CFS period, in µs
		}
		return float64(r.CPUQuota) / float64(period)
	}
	return 0
}

// ConfigEvent builds the configuration telemetry of a container. Its id
// derives from the container, its start and its configuration, so the
// snapshot taken at a collector restart or stream resync is stored once
// while a new start or an update yields a new document.
func ConfigEvent(host string, ci *Container, at, now time.Time) *event.Event {
	cfg := ci.ConfigSnapshot()
	return &event.Event{
		Timestamp: at.UTC(),
		Message:   "configuration of container " + ci.Name,
		Event: event.Meta{
			ID:       event.DeriveID(host, "config", ci.ID, ci.StartedAt.Format(time.RFC3339Nano), ConfigFingerprint(cfg)),
			Kind:     event.KindEvent,
			Category: []string{"configuration"},
			Type:     []string{"info"},
			Action:   "container-config",
			Dataset:  event.TelemetryConfig.Dataset(),
			Module:   event.Module,
			Created:  now.UTC(),
		},
		Host:      event.Host{Name: host},
		Container: ci.ECS(),
		Whalewatch: event.Whalewatch{
			SchemaVersion: event.SchemaVersion,
			Telemetry:     event.TelemetryConfig,
			Config:        cfg,
		},
	}
}
