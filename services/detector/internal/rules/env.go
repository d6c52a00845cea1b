package rules

import (
	"path"
	"strings"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/services/detector/internal/state"
)

// Env is what a condition sees: the telemetry event under its ECS field
// names, the state snapshot as `state`, and a few derived fields. Every
// object is a value, never nil, so `process.name` on a config event is ""
// rather than an error: conditions need no nil checks.
type Env struct {
	Timestamp   int64          `expr:"timestamp"` // Unix seconds
	Message     string         `expr:"message"`
	Tags        []string       `expr:"tags"`
	Event       MetaEnv        `expr:"event"`
	Host        HostEnv        `expr:"host"`
	Container   ContainerEnv   `expr:"container"`
	Process     ProcessEnv     `expr:"process"`
	Source      EndpointEnv    `expr:"source"`
	Destination EndpointEnv    `expr:"destination"`
	File        FileEnv        `expr:"file"`
	Network     NetworkEnv     `expr:"network"`
	Whalewatch  WhalewatchEnv  `expr:"whalewatch"`
	State       state.Snapshot `expr:"state"`
}

// MetaEnv is event.*.
type MetaEnv struct {
	ID       string   `expr:"id"`
	Kind     string   `expr:"kind"`
	Category []string `expr:"category"`
	Type     []string `expr:"type"`
	Action   string   `expr:"action"`
	Dataset  string   `expr:"dataset"`
	Outcome  string   `expr:"outcome"` // success or failure for kernel-sensor events
}

// HostEnv is host.*.
type HostEnv struct {
	Name string `expr:"name"`
}

// ContainerEnv is container.*.
type ContainerEnv struct {
	ID      string            `expr:"id"`
	Name    string            `expr:"name"`
	Image   ImageEnv          `expr:"image"`
	Labels  map[string]string `expr:"labels"`
	Runtime string            `expr:"runtime"`
}

// ImageEnv is container.image.* plus what rules ask about a reference.
type ImageEnv struct {
	Name     string   `expr:"name"`     // repository as the container was created with it, e.g. "ghcr.io/acme/api"
	Tag      string   `expr:"tag"`      // first tag, "" when none
	Tags     []string `expr:"tags"`     // all tags (ECS container.image.tag)
	Digest   string   `expr:"digest"`   // first repo digest, "" when none
	Registry string   `expr:"registry"` // registry host: "docker.io" for Docker Hub short names
}

// ProcessEnv is process.* plus `tool` and `path`.
type ProcessEnv struct {
	PID              int       `expr:"pid"`
	Name             string    `expr:"name"`
	Executable       string    `expr:"executable"`
	CommandLine      string    `expr:"command_line"`
	Args             []string  `expr:"args"`
	ArgsCount        int       `expr:"args_count"`
	WorkingDirectory string    `expr:"working_directory"`
	Parent           ParentEnv `expr:"parent"`
	User             UserEnv   `expr:"user"`
	// Start is when the process started, in Unix seconds; 0 when unknown.
	Start int64 `expr:"start"`
	// Tool is the lower-case name the program was run as: the base name of
	// argv[0], of the BusyBox applet (busybox nc ...), of process.name or of
	// the executable, in that order.
	Tool string `expr:"tool"`
	// Path is the executable's path: process.executable, else argv[0] when it
	// is a path ("" otherwise).
	Path     string  `expr:"path"`
	EntityID string  `expr:"entity_id"`
	Hash     HashEnv `expr:"hash"`
}

// HashEnv is process.hash.*.
type HashEnv struct {
	SHA256 string `expr:"sha256"`
}

// AncestorEnv is one element of whalewatch.ancestry (parent first).
type AncestorEnv struct {
	PID         int    `expr:"pid"`
	Name        string `expr:"name"`
	Executable  string `expr:"executable"`
	CommandLine string `expr:"command_line"`
}

// ParentEnv is process.parent.*.
type ParentEnv struct {
	PID        int    `expr:"pid"`
	Name       string `expr:"name"`
	Executable string `expr:"executable"`
}

// UserEnv is process.user.*.
type UserEnv struct {
	ID   string `expr:"id"`
	Name string `expr:"name"`
}

// EndpointEnv is source.* and destination.*.
type EndpointEnv struct {
	IP      string `expr:"ip"`
	Port    int    `expr:"port"`
	Address string `expr:"address"`
}

// FileEnv is file.*.
type FileEnv struct {
	Path       string `expr:"path"`
	TargetPath string `expr:"target_path"`
	Type       string `expr:"type"`
	Size       int64  `expr:"size"`
	Mode       string `expr:"mode"`
	// WrittenPath is the path a write leaves behind: the new name of a
	// rename (target_path), else path.
	WrittenPath string `expr:"written_path"`
}

// NetworkEnv is network.*.
type NetworkEnv struct {
	Transport string `expr:"transport"`
	Type      string `expr:"type"`
	Direction string `expr:"direction"`
}

// WhalewatchEnv is whalewatch.*.
type WhalewatchEnv struct {
	Telemetry  string        `expr:"telemetry"`
	Source     string        `expr:"source"`
	Config     ConfigEnv     `expr:"config"`
	Resource   ResourceEnv   `expr:"resource"`
	Log        LogEnv        `expr:"log"`
	FileChange FileChangeEnv `expr:"file_change"`
	Socket     SocketEnv     `expr:"socket"`
	DockerAPI  DockerAPIEnv  `expr:"docker_api"`
	Syscall    SyscallEnv    `expr:"syscall"`
	Stdio      StdioEnv      `expr:"stdio"`
	Ancestry   []AncestorEnv `expr:"ancestry"`
}

// ConfigEnv is whalewatch.config.*; `present` is false on other telemetry.
type ConfigEnv struct {
	Present         bool        `expr:"present"`
	User            string      `expr:"user"`
	Privileged      bool        `expr:"privileged"`
	CapAdd          []string    `expr:"cap_add"`
	PIDMode         string      `expr:"pid_mode"`
	NetworkMode     string      `expr:"network_mode"`
	IPCMode         string      `expr:"ipc_mode"`
	ReadonlyRootfs  bool        `expr:"readonly_rootfs"`
	SecurityOpt     []string    `expr:"security_opt"`
	Mounts          []MountEnv  `expr:"mounts"`
	Devices         []DeviceEnv `expr:"devices"`
	Entrypoint      []string    `expr:"entrypoint"`
	Cmd             []string    `expr:"cmd"`
	MemoryLimit     int64       `expr:"memory_limit"`
	NanoCPUs        int64       `expr:"nano_cpus"`
	PidsLimit       int64       `expr:"pids_limit"`
	RestartPolicy   string      `expr:"restart_policy"`
	PublishedPorts  []PortEnv   `expr:"published_ports"`
	ImageID         string      `expr:"image_id"`
	NoNewPrivileges bool        `expr:"no_new_privileges"`
	Healthcheck     []string    `expr:"healthcheck"`
}

// MountEnv is one element of whalewatch.config.mounts.
type MountEnv struct {
	Type        string `expr:"type"`
	Source      string `expr:"source"`
	Destination string `expr:"destination"`
	ReadOnly    bool   `expr:"read_only"`
}

// DeviceEnv is one element of whalewatch.config.devices.
type DeviceEnv struct {
	PathOnHost      string `expr:"path_on_host"`
	PathInContainer string `expr:"path_in_container"`
	Permissions     string `expr:"permissions"`
}

// PortEnv is one element of whalewatch.config.published_ports.
type PortEnv struct {
	HostIP        string `expr:"host_ip"`
	HostPort      string `expr:"host_port"`
	ContainerPort string `expr:"container_port"`
	Protocol      string `expr:"protocol"`
}

// ResourceEnv is whalewatch.resource.*.
type ResourceEnv struct {
	IntervalSeconds  float64 `expr:"interval_seconds"`
	CPUPercent       float64 `expr:"cpu_percent"`
	CPULimitPercent  float64 `expr:"cpu_limit_percent"`
	MemoryBytes      int64   `expr:"memory_bytes"`
	MemoryLimitBytes int64   `expr:"memory_limit_bytes"`
	PIDs             int64   `expr:"pids"`
	NetRxBytes       uint64  `expr:"net_rx_bytes"`
	NetTxBytes       uint64  `expr:"net_tx_bytes"`
	NetRxPackets     uint64  `expr:"net_rx_packets"`
	NetTxPackets     uint64  `expr:"net_tx_packets"`
	BlockReadBytes   uint64  `expr:"block_read_bytes"`
	BlockWriteBytes  uint64  `expr:"block_write_bytes"`
}

// LogEnv is whalewatch.log.*.
type LogEnv struct {
	Stream    string   `expr:"stream"`
	Lines     []string `expr:"lines"`
	Dropped   int      `expr:"dropped"`
	Truncated int      `expr:"truncated"`
}

// FileChangeEnv is whalewatch.file_change.*.
type FileChangeEnv struct {
	Kind       string `expr:"kind"`
	Executable bool   `expr:"executable"`
	Operation  string `expr:"operation"`
	Mode       string `expr:"mode"`
	Setuid     bool   `expr:"setuid"`
	Setgid     bool   `expr:"setgid"`
}

// SyscallEnv is whalewatch.syscall.*; `present` is false when the event did
// not come from the kernel sensor.
type SyscallEnv struct {
	Present bool     `expr:"present"`
	Name    string   `expr:"name"`
	Args    []string `expr:"args"`
	Return  int64    `expr:"return"`
	Errno   string   `expr:"errno"`
}

// StdioEnv is whalewatch.stdio.*.
type StdioEnv struct {
	Stdin  string `expr:"stdin"`
	Stdout string `expr:"stdout"`
	Stderr string `expr:"stderr"`
}

// SocketEnv is whalewatch.socket.*.
type SocketEnv struct {
	State string `expr:"state"`
}

// DockerAPIEnv is whalewatch.docker_api.*; `present` is false on other telemetry.
type DockerAPIEnv struct {
	Present   bool   `expr:"present"`
	Address   string `expr:"address"`
	TLS       bool   `expr:"tls"`
	Reachable bool   `expr:"reachable"`
	Version   string `expr:"version"`
}

// newEnv fills env from e and st. It copies string and slice headers only,
// except for config telemetry, whose mounts and ports it converts.
func newEnv(env *Env, e *event.Event, st *state.Snapshot) {
	*env = Env{
		Timestamp: e.Timestamp.Unix(),
		Message:   e.Message,
		Tags:      e.Tags,
		Event: MetaEnv{
			ID: e.Event.ID, Kind: string(e.Event.Kind), Category: e.Event.Category, Type: e.Event.Type,
			Action: e.Event.Action, Dataset: e.Event.Dataset, Outcome: e.Event.Outcome,
		},
		Host:       HostEnv{Name: e.Host.Name},
		Whalewatch: WhalewatchEnv{Telemetry: string(e.Whalewatch.Telemetry), Source: e.Whalewatch.Source},
	}
	if st != nil {
		env.State = *st
	}
	if c := e.Container; c != nil {
		env.Container = ContainerEnv{ID: c.ID, Name: c.Name, Labels: c.Labels, Runtime: c.Runtime, Image: imageEnv(c.Image)}
	}
	if p := e.Process; p != nil {
		env.Process = ProcessEnv{
			PID: p.PID, Name: p.Name, Executable: p.Executable, CommandLine: p.CommandLine, Args: p.Args,
			ArgsCount: p.ArgsCount, WorkingDirectory: p.WorkingDirectory, Tool: ToolName(p), Path: exePath(p),
			EntityID: p.EntityID,
		}
		if p.Hash != nil {
			env.Process.Hash = HashEnv{SHA256: p.Hash.SHA256}
		}
		if !p.Start.IsZero() {
			env.Process.Start = p.Start.Unix()
		}
		if pp := p.Parent; pp != nil {
			env.Process.Parent = ParentEnv{PID: pp.PID, Name: pp.Name, Executable: pp.Executable}
		}
		if u := p.User; u != nil {
			env.Process.User = UserEnv{ID: u.ID, Name: u.Name}
		}
	}
	if s := e.Source; s != nil {
		env.Source = EndpointEnv{IP: s.IP, Port: s.Port, Address: s.Address}
	}
	if d := e.Destination; d != nil {
		env.Destination = EndpointEnv{IP: d.IP, Port: d.Port, Address: d.Address}
	}
	if f := e.File; f != nil {
		env.File = FileEnv{Path: f.Path, TargetPath: f.TargetPath, Type: f.Type, Size: f.Size, Mode: f.Mode, WrittenPath: f.Path}
		if fc := e.Whalewatch.FileChange; fc != nil && fc.Operation == "rename" && f.TargetPath != "" {
			env.File.WrittenPath = f.TargetPath
		}
	}
	if n := e.Network; n != nil {
		env.Network = NetworkEnv{Transport: n.Transport, Type: n.Type, Direction: n.Direction}
	}
	w := &e.Whalewatch
	if c := w.Config; c != nil {
		env.Whalewatch.Config = configEnv(c)
	}
	if r := w.Resource; r != nil {
		env.Whalewatch.Resource = ResourceEnv(*r)
	}
	if l := w.Log; l != nil {
		env.Whalewatch.Log = LogEnv(*l)
	}
	if f := w.FileChange; f != nil {
		env.Whalewatch.FileChange = FileChangeEnv(*f)
	}
	if s := w.Socket; s != nil {
		env.Whalewatch.Socket = SocketEnv(*s)
	}
	if sc := w.Syscall; sc != nil {
		env.Whalewatch.Syscall = SyscallEnv{Present: true, Name: sc.Name, Args: sc.Args, Return: sc.Return, Errno: sc.Errno}
	}
	if sio := w.Stdio; sio != nil {
		env.Whalewatch.Stdio = StdioEnv(*sio)
	}
	if len(w.Ancestry) > 0 {
		env.Whalewatch.Ancestry = make([]AncestorEnv, len(w.Ancestry))
		for i, a := range w.Ancestry {
			env.Whalewatch.Ancestry[i] = AncestorEnv(a)
		}
	}
	if a := w.DockerAPI; a != nil {
		env.Whalewatch.DockerAPI = DockerAPIEnv{Present: true, Address: a.Address, TLS: a.TLS, Reachable: a.Reachable, Version: a.Version}
	}
}

func imageEnv(img event.Image) ImageEnv {
	ie := ImageEnv{Name: img.Name, Tags: img.Tag, Registry: Registry(img.Name)}
	if len(img.Tag) > 0 {
		ie.Tag = img.Tag[0]
	}
	if img.Hash != nil && len(img.Hash.All) > 0 {
		ie.Digest = img.Hash.All[0]
	}
	return ie
}

func configEnv(c *event.ContainerConfig) ConfigEnv {
	ce := ConfigEnv{
		Present: true, User: c.User, Privileged: c.Privileged, CapAdd: c.CapAdd, PIDMode: c.PIDMode,
		NetworkMode: c.NetworkMode, IPCMode: c.IPCMode, ReadonlyRootfs: c.ReadonlyRootfs,
		SecurityOpt: c.SecurityOpt, Entrypoint: c.Entrypoint, Cmd: c.Cmd, MemoryLimit: c.MemoryLimit,
		NanoCPUs: c.NanoCPUs, PidsLimit: c.PidsLimit, RestartPolicy: c.RestartPolicy, ImageID: c.ImageID,
		NoNewPrivileges: c.NoNewPrivileges, Healthcheck: c.Healthcheck,
	}
	if len(c.Mounts) > 0 {
		ce.Mounts = make([]MountEnv, len(c.Mounts))
		for i, m := range c.Mounts {
			ce.Mounts[i] = MountEnv(m)
		}
	}
	if len(c.Devices) > 0 {
		ce.Devices = make([]DeviceEnv, len(c.Devices))
		for i, d := range c.Devices {
			ce.Devices[i] = DeviceEnv(d)
		}
	}
	if len(c.PublishedPorts) > 0 {
		ce.PublishedPorts = make([]PortEnv, len(c.PublishedPorts))
		for i, p := range c.PublishedPorts {
			ce.PublishedPorts[i] = PortEnv(p)
		}
	}
	return ce
}

// Registry is the registry host of an image reference: its first path
// component when that looks like a host (has a dot or a port, or is
// localhost), else docker.io. An image given by id has no registry ("").
func Registry(name string) string {
	if name == "" || strings.HasPrefix(name, "sha256:") {
		return ""
	}
	first, _, found := strings.Cut(name, "/")
	if found && (strings.ContainsAny(first, ".:") || first == "localhost") {
		return strings.ToLower(first)
	}
	return "docker.io"
}

// ToolName is the lower-case name a process was run as: the base name of
// argv[0]; for BusyBox (/bin/busybox nc ...) the applet; else process.name;
// else the executable's base name.
func ToolName(p *event.Process) string {
	if len(p.Args) > 0 && p.Args[0] != "" {
		b := basename(p.Args[0])
		if b == "busybox" && len(p.Args) > 1 {
			b = basename(p.Args[1])
		}
		return lower(b)
	}
	if p.Name != "" {
		return lower(p.Name)
	}
	return lower(basename(p.Executable))
}

func exePath(p *event.Process) string {
	if p.Executable != "" {
		return p.Executable
	}
	if len(p.Args) > 0 && strings.Contains(p.Args[0], "/") {
		return p.Args[0]
	}
	return ""
}

func basename(s string) string {
	if s == "" {
		return ""
	}
	return path.Base(s)
}

// lower is strings.ToLower without an allocation for the common ASCII
// lower-case input.
func lower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' || c >= 0x80 {
			return strings.ToLower(s)
		}
	}
	return s
}
