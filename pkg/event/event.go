// Package event is whalewatch's wire contract: the one JSON document that every
// service publishes and consumes on NATS, and that the indexer writes to
// Elasticsearch unchanged.
//
// Field names follow the Elastic Common Schema (ECS 8.x) so that Kibana's ECS-aware
// views work on them as they are. Everything that ECS has no field for lives under
// "whalewatch.*". Every document carries whalewatch.schema_version; a consumer
// rejects (dead-letters) a document whose major version it does not know.
//
// Two kinds of document travel:
//
//   - telemetry (event.kind "event"): what the collector saw on a Docker host,
//     one telemetry kind per subject (see package subject);
//   - threats (event.kind "alert"): what the detector concluded, carrying rule.*,
//     threat.* (MITRE ATT&CK), event.severity and whalewatch.severity.
//
// Response requests and their results are documents too (event.kind "event",
// event.category "process", whalewatch.response set).
//
// event.id is unique and stable: a publisher that retries publishes the same id,
// and JetStream's duplicate window (Nats-Msg-Id = event.id) stores it once. IDs of
// documents derived from other documents (a threat from the telemetry that
// triggered it) are derived deterministically with DeriveID, so a redelivered
// input yields the same output id.
package event

import (
	"time"
)

// SchemaVersion is written to whalewatch.schema_version. Bump the minor version
// for additive changes, the major version for anything a consumer could misread.
const SchemaVersion = "1.2"

// SchemaMajor is the major part of SchemaVersion; consumers accept any minor.
const SchemaMajor = "1"

// Kind is ECS event.kind.
type Kind string

const (
	KindEvent Kind = "event" // telemetry, response requests and results
	KindAlert Kind = "alert" // threats
)

// Telemetry names a kind of telemetry. It is the last token of a telemetry
// subject and the suffix of event.dataset ("whalewatch.<telemetry>").
type Telemetry string

const (
	TelemetryLifecycle Telemetry = "lifecycle" // Docker events: create, start, die, exec_start, ...
	TelemetryConfig    Telemetry = "config"    // container configuration snapshot (inspect)
	TelemetryProcess   Telemetry = "process"   // a process seen in a container
	TelemetryResource  Telemetry = "resource"  // CPU, memory, network, block I/O
	TelemetryLog       Telemetry = "log"       // a batch of stdout/stderr lines
	TelemetryFile      Telemetry = "file"      // filesystem changes since the last look
	TelemetryNetwork   Telemetry = "network"   // socket changes (listen, connect)
	// TelemetrySyscall is a security-relevant system call of a container
	// process seen by the kernel sensor (mount, ptrace, unshare, init_module,
	// setuid, ...), successful or refused: whalewatch.syscall holds it.
	TelemetrySyscall Telemetry = "syscall"
)

// Telemetries lists every telemetry kind, in a stable order.
var Telemetries = []Telemetry{
	TelemetryLifecycle, TelemetryConfig, TelemetryProcess, TelemetryResource,
	TelemetryLog, TelemetryFile, TelemetryNetwork, TelemetrySyscall,
}

// Valid reports whether t is a known telemetry kind.
func (t Telemetry) Valid() bool {
	for _, k := range Telemetries {
		if k == t {
			return true
		}
	}
	return false
}

// Dataset is the ECS event.dataset value for this telemetry kind.
func (t Telemetry) Dataset() string { return Module + "." + string(t) }

// Module is ECS event.module for every whalewatch document.
const Module = "whalewatch"

// DatasetThreat is event.dataset of threats.
const DatasetThreat = Module + ".threat"

// DatasetResponse is event.dataset of response requests and results.
const DatasetResponse = Module + ".response"

// Event is one whalewatch document. Pointer fields are omitted when nil, so a
// process event carries no empty file.* object.
type Event struct {
	Timestamp   time.Time  `json:"@timestamp"`
	Message     string     `json:"message,omitempty"`
	Tags        []string   `json:"tags,omitempty"`
	Event       Meta       `json:"event"`
	Host        Host       `json:"host"`
	Container   *Container `json:"container,omitempty"`
	Process     *Process   `json:"process,omitempty"`
	Source      *Endpoint  `json:"source,omitempty"`
	Destination *Endpoint  `json:"destination,omitempty"`
	File        *File      `json:"file,omitempty"`
	Network     *Network   `json:"network,omitempty"`
	Rule        *Rule      `json:"rule,omitempty"`
	Threat      *Threat    `json:"threat,omitempty"`
	Whalewatch  Whalewatch `json:"whalewatch"`

	// ECS bookkeeping (see ecs.go); Complete fills them.
	ECS        *ECS        `json:"ecs,omitempty"`
	DataStream *DataStream `json:"data_stream,omitempty"`
	Agent      *Agent      `json:"agent,omitempty"`
	Observer   *Observer   `json:"observer,omitempty"`
	Related    *Related    `json:"related,omitempty"`
}

// Meta is ECS event.*.
type Meta struct {
	ID       string    `json:"id"`
	Kind     Kind      `json:"kind"`
	Category []string  `json:"category,omitempty"` // ECS allowed values: process, network, file, configuration, host, intrusion_detection, ...
	Type     []string  `json:"type,omitempty"`     // ECS allowed values: start, end, change, creation, deletion, info, connection, ...
	Action   string    `json:"action,omitempty"`   // free text, e.g. "exec_start", "process-seen", "nc-listener"
	Dataset  string    `json:"dataset,omitempty"`
	Module   string    `json:"module,omitempty"`
	Severity int       `json:"severity,omitempty"` // threats only: Severity.Score()
	Outcome  string    `json:"outcome,omitempty"`  // success, failure, unknown (response results)
	Reason   string    `json:"reason,omitempty"`
	Created  time.Time `json:"created,omitzero"` // when the collector read it; @timestamp is when it happened
}

// Host is ECS host.*: the Docker host the collector runs on.
type Host struct {
	Name string `json:"name"`
}

// Container is ECS container.*.
type Container struct {
	ID      string            `json:"id"`
	Name    string            `json:"name,omitempty"`
	Image   Image             `json:"image,omitzero"`
	Labels  map[string]string `json:"labels,omitempty"`
	Runtime string            `json:"runtime,omitempty"`
	// ECS container metrics and security context, derived by Complete from
	// whalewatch.resource and whalewatch.config.
	CPU             *ContainerUsage           `json:"cpu,omitempty"`
	Memory          *ContainerUsage           `json:"memory,omitempty"`
	Network         *ContainerNetwork         `json:"network,omitempty"`
	Disk            *ContainerDisk            `json:"disk,omitempty"`
	SecurityContext *ContainerSecurityContext `json:"security_context,omitempty"`
}

// Image is ECS container.image.*. ECS makes tag and hash.all arrays.
type Image struct {
	Name string     `json:"name,omitempty"`
	Tag  []string   `json:"tag,omitempty"`
	Hash *ImageHash `json:"hash,omitempty"`
}

// ImageHash is ECS container.image.hash.
type ImageHash struct {
	All []string `json:"all,omitempty"` // repo digests, "sha256:..."
}

// Process is ECS process.*. PIDs are as seen from the host's PID namespace
// (docker top and /proc on the host both report host PIDs).
type Process struct {
	// EntityID identifies one process across documents: Complete derives
	// it from host, container, PID and start time (PIDs are reused).
	EntityID         string    `json:"entity_id,omitempty"`
	PID              int       `json:"pid,omitempty"`
	Name             string    `json:"name,omitempty"`
	Executable       string    `json:"executable,omitempty"`
	CommandLine      string    `json:"command_line,omitempty"`
	Args             []string  `json:"args,omitempty"`
	ArgsCount        int       `json:"args_count,omitempty"`
	WorkingDirectory string    `json:"working_directory,omitempty"`
	Start            time.Time `json:"start,omitzero"`
	Parent           *Parent   `json:"parent,omitempty"`
	User             *User     `json:"user,omitempty"`
	// Hash is the executable's digest (ECS process.hash.*), read with a
	// bounded read of /proc/<pid>/exe; absent when it could not be read.
	Hash *Hash `json:"hash,omitempty"`
	// ExitCode is set on process end events (ECS process.exit_code).
	ExitCode *int `json:"exit_code,omitempty"`
}

// Hash is ECS *.hash.*.
type Hash struct {
	SHA256 string `json:"sha256,omitempty"`
}

// Parent is ECS process.parent.*.
type Parent struct {
	PID        int    `json:"pid,omitempty"`
	Name       string `json:"name,omitempty"`
	Executable string `json:"executable,omitempty"`
}

// User is ECS process.user.*. ECS keeps the id as a string.
type User struct {
	ID   string `json:"id,omitempty"`
	Name string `json:"name,omitempty"`
}

// Endpoint is ECS source.* / destination.*.
type Endpoint struct {
	IP      string `json:"ip,omitempty"`
	Port    int    `json:"port,omitempty"`
	Address string `json:"address,omitempty"`
}

// File is ECS file.*.
type File struct {
	Path string `json:"path"`
	// TargetPath is the target of a link or symlink, or the new path of a
	// rename (ECS file.target_path).
	TargetPath string `json:"target_path,omitempty"`
	Type       string `json:"type,omitempty"` // file, dir, symlink
	Size       int64  `json:"size,omitempty"`
	Mode       string `json:"mode,omitempty"` // octal, e.g. "0755"
}

// Network is ECS network.*.
type Network struct {
	Transport string `json:"transport,omitempty"` // tcp, udp
	Type      string `json:"type,omitempty"`      // ipv4, ipv6
	Direction string `json:"direction,omitempty"` // ingress (listening/accepted), egress (outbound)
}

// Rule is ECS rule.*: the detection rule behind a threat.
type Rule struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	Ruleset     string `json:"ruleset,omitempty"`
}

// Threat is ECS threat.*. ECS makes technique and tactic fields arrays.
type Threat struct {
	Framework string    `json:"framework"` // always FrameworkMITRE
	Technique Technique `json:"technique"`
	Tactic    Tactic    `json:"tactic"`
}

// FrameworkMITRE is the only threat.framework whalewatch writes.
const FrameworkMITRE = "MITRE ATT&CK"

// Technique is ECS threat.technique.*.
type Technique struct {
	ID   []string `json:"id"`
	Name []string `json:"name"`
}

// Tactic is ECS threat.tactic.*.
type Tactic struct {
	ID   []string `json:"id,omitempty"`
	Name []string `json:"name"`
}

// Whalewatch holds the fields ECS has no place for.
type Whalewatch struct {
	SchemaVersion string `json:"schema_version"`
	// Telemetry is the telemetry kind of a telemetry document; empty otherwise.
	Telemetry Telemetry `json:"telemetry,omitempty"`
	// Severity is the threat's severity label; event.severity holds its score.
	Severity Severity `json:"severity,omitempty"`
	// Source says how the collector saw a process: "docker-top", "docker-exec",
	// "proc-connector".
	Source string `json:"source,omitempty"`
	// Trigger is the event.id of the telemetry that raised a threat.
	Trigger string `json:"trigger,omitempty"`
	// Config is the container configuration snapshot of config telemetry.
	Config *ContainerConfig `json:"config,omitempty"`
	// Response is set on response requests and results.
	Response *Response `json:"response,omitempty"`
	// Resource is the sample of resource telemetry.
	Resource *Resource `json:"resource,omitempty"`
	// Log is the batch of lines of log telemetry.
	Log *LogBatch `json:"log,omitempty"`
	// FileChange qualifies file telemetry (file.* holds the path).
	FileChange *FileChange `json:"file_change,omitempty"`
	// Socket qualifies network telemetry (source.* is the container's end,
	// destination.* the remote end).
	Socket *Socket `json:"socket,omitempty"`
	// DockerAPI is host-scoped config telemetry about the Engine API exposure.
	DockerAPI *DockerAPI `json:"docker_api,omitempty"`
	// Syscall is the system call behind an event the kernel sensor saw (file,
	// network and syscall telemetry), with its result: a refused call is an
	// attempt, and attempts are telemetry too (event.outcome "failure").
	Syscall *Syscall `json:"syscall,omitempty"`
	// Ancestry is the process's ancestors, parent first, as far as the
	// collector knows them (at most MaxAncestry).
	Ancestry []Ancestor `json:"ancestry,omitempty"`
	// Stdio tells what the process's standard streams are at exec: a shell
	// whose stdin is a socket is a network shell whatever it is called.
	Stdio *Stdio `json:"stdio,omitempty"`
	// Evidence is what a threat carries for an analyst to judge it.
	Evidence *Evidence `json:"evidence,omitempty"`
	// Incident groups the threats of one attack on one container.
	Incident *Incident `json:"incident,omitempty"`
}

// Syscall is one system call of a container process, as the kernel sensor
// saw it on the way out.
type Syscall struct {
	Name string `json:"name"` // the call's name: openat, connect, mount, ptrace, unshare, ...
	// Args are the call's decoded arguments worth reading (paths, flags by
	// name, target pids, namespace flags), in the call's order, each bounded.
	Args []string `json:"args,omitempty"`
	// Return is the call's return value; negative errno when it failed.
	Return int64 `json:"return"`
	// Errno names the error of a failed call (EPERM, EROFS, ECONNREFUSED);
	// empty when the call succeeded.
	Errno string `json:"errno,omitempty"`
}

// Ancestor is one ancestor of a process.
type Ancestor struct {
	PID         int    `json:"pid,omitempty"`
	Name        string `json:"name,omitempty"`
	Executable  string `json:"executable,omitempty"`
	CommandLine string `json:"command_line,omitempty"`
}

// Stdio says what a process's standard streams are: "socket", "pipe", "tty",
// "file", "null" or "other"; empty when unknown.
type Stdio struct {
	Stdin  string `json:"stdin,omitempty"`
	Stdout string `json:"stdout,omitempty"`
	Stderr string `json:"stderr,omitempty"`
}

// Evidence is what a threat carries so that an analyst can judge it without
// searching: the process's ancestry with argv (in whalewatch.ancestry of the
// threat itself), the container's last log lines and its recent file and
// connection activity, each bounded.
type Evidence struct {
	LogLines    []string `json:"log_lines,omitempty"`    // last lines, oldest first, at most MaxEvidence
	FileChanges []string `json:"file_changes,omitempty"` // "write /etc/passwd", most recent last
	Connections []string `json:"connections,omitempty"`  // "connect 127.0.0.1:4444 tcp", most recent last
	Processes   []string `json:"processes,omitempty"`    // recent command lines of the container
}

// Incident groups threats: every threat of one rule on one container within
// a window, and every threat of a chain on one container (drop, exec,
// connect, ...), share one incident id. The first threat of an incident
// opens it; later ones carry the running count.
type Incident struct {
	ID    string    `json:"id"`
	Count int       `json:"count"`           // threats in the incident so far, this one included
	First time.Time `json:"first,omitzero"`  // when the incident opened
	Rules []string  `json:"rules,omitempty"` // rules that have fired in it so far
}

// Resource is one resource sample of a container. Counters are cumulative
// since the container started; rates are over IntervalSeconds.
type Resource struct {
	IntervalSeconds  float64 `json:"interval_seconds"`
	CPUPercent       float64 `json:"cpu_percent"`                 // of one core: 200 = two cores busy
	CPULimitPercent  float64 `json:"cpu_limit_percent,omitempty"` // of the container's CPU limit; 0 when unlimited
	MemoryBytes      int64   `json:"memory_bytes"`
	MemoryLimitBytes int64   `json:"memory_limit_bytes,omitempty"` // 0 when unlimited
	PIDs             int64   `json:"pids"`
	NetRxBytes       uint64  `json:"net_rx_bytes"`
	NetTxBytes       uint64  `json:"net_tx_bytes"`
	NetRxPackets     uint64  `json:"net_rx_packets"`
	NetTxPackets     uint64  `json:"net_tx_packets"`
	BlockReadBytes   uint64  `json:"block_read_bytes"`
	BlockWriteBytes  uint64  `json:"block_write_bytes"`
}

// LogBatch is a batch of consecutive log lines of one stream of a container.
type LogBatch struct {
	Stream string   `json:"stream"` // stdout, stderr
	Lines  []string `json:"lines"`  // at most MaxLogLines, each at most MaxLogLine bytes
	// Dropped counts lines the collector could not publish (back-pressure)
	// since the previous batch of this container.
	Dropped int `json:"dropped,omitempty"`
	// Truncated counts lines of this batch that were cut to MaxLogLine.
	Truncated int `json:"truncated,omitempty"`
}

// FileChange qualifies file telemetry. From `docker diff` (reconciliation)
// only Kind is known; from the kernel sensor Operation says what the process
// did, at once, and whalewatch.syscall says whether the kernel allowed it.
type FileChange struct {
	Kind       string `json:"kind"`                 // added, changed, deleted
	Executable bool   `json:"executable,omitempty"` // any execute bit set, where readable
	// Operation is what the process did: write (opened for writing), create,
	// truncate, rename, unlink, chmod, link, symlink, or read (an open for
	// reading of a sensitive path).
	Operation string `json:"operation,omitempty"`
	// Mode is the new mode of a chmod or create, octal ("04755").
	Mode string `json:"mode,omitempty"`
	// Setuid and Setgid are set when a chmod or create sets those bits.
	Setuid bool `json:"setuid,omitempty"`
	Setgid bool `json:"setgid,omitempty"`
}

// Socket is one socket state change of a container.
type Socket struct {
	// State is listen, established, syn_sent or closed (socket tables and TCP
	// state changes), or connect / accept (the system calls, seen by the
	// kernel sensor whether or not they succeeded).
	State string `json:"state"`
}

// DockerAPI tells whether the Docker Engine API is reachable over TCP.
type DockerAPI struct {
	Address   string `json:"address"`           // host:port probed or configured
	TLS       bool   `json:"tls"`               // the listener requires TLS
	Reachable bool   `json:"reachable"`         // it answered the Engine API without TLS
	Version   string `json:"version,omitempty"` // API version it reported
}

// ContainerConfig is what inspect tells about a container's attack surface.
// The collector fills what the Docker API reports; the detector's configuration
// rules read it.
type ContainerConfig struct {
	User           string   `json:"user,omitempty"`
	Privileged     bool     `json:"privileged"`
	CapAdd         []string `json:"cap_add,omitempty"`
	PIDMode        string   `json:"pid_mode,omitempty"`
	NetworkMode    string   `json:"network_mode,omitempty"`
	IPCMode        string   `json:"ipc_mode,omitempty"`
	ReadonlyRootfs bool     `json:"readonly_rootfs"`
	SecurityOpt    []string `json:"security_opt,omitempty"`
	Mounts         []Mount  `json:"mounts,omitempty"`
	Devices        []Device `json:"devices,omitempty"`
	Entrypoint     []string `json:"entrypoint,omitempty"`
	Cmd            []string `json:"cmd,omitempty"`
	// Healthcheck is the container's configured health check test, as Docker
	// keeps it (["CMD-SHELL", "curl -f localhost"] or ["CMD", "pg_isready"]);
	// empty when the container has none.
	Healthcheck     []string `json:"healthcheck,omitempty"`
	MemoryLimit     int64    `json:"memory_limit,omitempty"`
	NanoCPUs        int64    `json:"nano_cpus,omitempty"`
	PidsLimit       int64    `json:"pids_limit,omitempty"`
	RestartPolicy   string   `json:"restart_policy,omitempty"`
	PublishedPorts  []Port   `json:"published_ports,omitempty"`
	ImageID         string   `json:"image_id,omitempty"`
	NoNewPrivileges bool     `json:"no_new_privileges"`
}

// Mount is one bind or volume mount.
type Mount struct {
	Type        string `json:"type,omitempty"`
	Source      string `json:"source,omitempty"`
	Destination string `json:"destination"`
	ReadOnly    bool   `json:"read_only"`
}

// Device is one host device made available in the container (--device).
type Device struct {
	PathOnHost      string `json:"path_on_host"`
	PathInContainer string `json:"path_in_container,omitempty"`
	Permissions     string `json:"permissions,omitempty"` // cgroup permissions: r, w, m
}

// Port is one published port.
type Port struct {
	HostIP        string `json:"host_ip,omitempty"`
	HostPort      string `json:"host_port,omitempty"`
	ContainerPort string `json:"container_port"`
	Protocol      string `json:"protocol,omitempty"`
}

// Response is a response request or result.
type Response struct {
	Action string `json:"action"`            // pause, unpause, stop, kill, disconnect, limit_cpu
	Status string `json:"status,omitempty"`  // results: done, refused, failed, dry_run
	DryRun bool   `json:"dry_run"`           // requests: only report what would be done
	Reason string `json:"reason,omitempty"`  // why it was requested, refused or failed
	Target string `json:"request,omitempty"` // results: event.id of the request
	// CPUs is the CPU limit of a limit_cpu request, in cores (0.5: half of one).
	CPUs float64 `json:"cpus,omitempty"`
}
