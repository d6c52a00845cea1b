package sensor

import (
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// Mode is whalewatch.source of the sensor's events.
const Mode = "ebpf"

// maxProcs bounds the process table; a container forking without end cannot
// grow it further (its new processes get no ancestry).
const maxProcs = 65536

// exitedKeep is how long an exited process stays in the table, so that the
// events of its children still find their ancestry.
const exitedKeep = 30 * time.Second

// procEntry is what the sensor knows of a process of a container.
type procEntry struct {
	pid, ppid int
	startNs   uint64
	name      string
	exe       string
	cmdline   string
	exited    time.Time
}

// builder turns records into telemetry. It is used by Run's goroutine only.
type builder struct {
	host   string
	procs  map[int]*procEntry
	clock  clock
	hashes *hashCache
	readl  func(string) (string, error)
	// containerOf tells which container a host pid is in ("" when none or
	// unknown): kills of other containers' processes are reported.
	containerOf func(pid int) string
}

func newBuilder(host string, c clock, hashes *hashCache, containerOf func(int) string) *builder {
	return &builder{host: host, procs: map[int]*procEntry{}, clock: c, hashes: hashes, readl: os.Readlink, containerOf: containerOf}
}

func (b *builder) entityID(pid int, startNs uint64) string {
	return event.DeriveID(b.host, "process", strconv.Itoa(pid), strconv.FormatUint(startNs, 10))
}

func (b *builder) base(r *record, t event.Telemetry, id string) *event.Event {
	return &event.Event{
		Timestamp: b.clock.wall(r.ts),
		Event: event.Meta{
			ID:      event.DeriveID(b.host, Mode, id, strconv.Itoa(r.tid), strconv.FormatUint(r.ts, 10)),
			Kind:    event.KindEvent,
			Dataset: t.Dataset(),
			Module:  event.Module,
		},
		Host:      event.Host{Name: b.host},
		Container: &event.Container{ID: r.cid},
		Whalewatch: event.Whalewatch{
			SchemaVersion: event.SchemaVersion,
			Telemetry:     t,
			Source:        Mode,
		},
	}
}

func (b *builder) put(p *procEntry) {
	if _, ok := b.procs[p.pid]; !ok && len(b.procs) >= maxProcs {
		return
	}
	b.procs[p.pid] = p
}

// sweep forgets processes that exited more than exitedKeep ago.
func (b *builder) sweep(now time.Time) {
	for pid, p := range b.procs {
		if !p.exited.IsZero() && now.Sub(p.exited) > exitedKeep {
			delete(b.procs, pid)
		}
	}
}

// process is process.* of an event of pid (not an exec).
func (b *builder) process(r *record) *event.Process {
	pr := &event.Process{PID: r.pid, Name: r.comm, EntityID: b.entityID(r.pid, r.startNs), User: &event.User{ID: strconv.FormatUint(uint64(r.uid), 10)}}
	if p := b.procs[r.pid]; p != nil {
		pr.Executable, pr.CommandLine = p.exe, p.cmdline
		if p.ppid > 0 {
			pr.Parent = &event.Parent{PID: p.ppid}
			if pp := b.procs[p.ppid]; pp != nil {
				pr.Parent.Name, pr.Parent.Executable = pp.name, pp.exe
			}
		}
	}
	return pr
}

func (b *builder) ancestry(ppid int) []event.Ancestor {
	var out []event.Ancestor
	for pid := ppid; pid > 0 && len(out) < event.MaxAncestry; {
		p := b.procs[pid]
		if p == nil {
			break
		}
		out = append(out, event.Ancestor{PID: p.pid, Name: p.name, Executable: p.exe, CommandLine: p.cmdline})
		if p.ppid == pid {
			break
		}
		pid = p.ppid
	}
	return out
}

// build returns the telemetry of r, or nil when r only updates the process
// table (fork) or is not worth reporting.
func (b *builder) build(r *record) *event.Event {
	switch r.kind {
	case kindExec:
		return b.exec(r)
	case kindFork:
		parent := b.procs[r.pid]
		p := &procEntry{pid: r.child, ppid: r.pid, startNs: r.childStart, name: r.comm}
		if parent != nil {
			p.exe, p.cmdline = parent.exe, parent.cmdline
		}
		b.put(p)
		return nil
	case kindExit:
		return b.exit(r)
	case kindSyscall:
		switch {
		case isFileCall(r.sc):
			return b.file(r)
		case isNetCall(r.sc):
			return b.connection(r)
		default:
			return b.syscall(r)
		}
	case kindSockState:
		return b.sockState(r)
	}
	return nil
}

func (b *builder) exec(r *record) *event.Event {
	p := &procEntry{pid: r.pid, ppid: r.ppid, startNs: r.startNs, name: r.comm, exe: r.filename, cmdline: strings.Join(r.args, " ")}
	if strings.HasPrefix(r.filename, "/proc/") || strings.HasPrefix(r.filename, "/dev/fd/") {
		// Executed through a link to itself or to an open file
		// (busybox's applets run "/proc/self/exe", fexecve): the link
		// tells the file while the process lives, argv[0] its name.
		if exe, err := b.readl("/proc/" + strconv.Itoa(r.pid) + "/exe"); err == nil {
			p.exe = exe
		}
		if len(r.args) > 0 && r.args[0] != "" {
			p.name = filepath.Base(r.args[0])
		}
	}
	if p.name == "" {
		p.name = filepath.Base(r.filename)
	}
	b.put(p)
	e := b.base(r, event.TelemetryProcess, "exec")
	e.Event.Category = []string{"process"}
	e.Event.Type = []string{"start"}
	e.Event.Action = "exec"
	pr := &event.Process{
		EntityID:    b.entityID(r.pid, r.startNs),
		PID:         r.pid,
		Name:        p.name,
		Executable:  p.exe,
		CommandLine: p.cmdline,
		Args:        r.args,
		ArgsCount:   len(r.args),
		Start:       b.clock.wall(r.startNs),
		User:        &event.User{ID: strconv.FormatUint(uint64(r.uid), 10)},
	}
	if r.argsTruncated {
		e.Tags = append(e.Tags, "args_truncated")
	}
	if r.ppid > 0 {
		pr.Parent = &event.Parent{PID: r.ppid}
		if pp := b.procs[r.ppid]; pp != nil {
			pr.Parent.Name, pr.Parent.Executable = pp.name, pp.exe
		}
	}
	if b.hashes != nil {
		if h := b.hashes.sum(r.pid); h != "" {
			pr.Hash = &event.Hash{SHA256: h}
		}
	}
	e.Process = pr
	e.Whalewatch.Ancestry = b.ancestry(r.ppid)
	e.Whalewatch.Stdio = &event.Stdio{Stdin: stdioType(r.stdio[0]), Stdout: stdioType(r.stdio[1]), Stderr: stdioType(r.stdio[2])}
	msg := pr.CommandLine
	if msg == "" {
		msg = "[" + pr.Name + "]"
	}
	e.Message = "exec " + strconv.Itoa(r.pid) + ": " + msg
	return e
}

func (b *builder) exit(r *record) *event.Event {
	e := b.base(r, event.TelemetryProcess, "exit")
	e.Event.Category = []string{"process"}
	e.Event.Type = []string{"end"}
	e.Event.Action = "exit"
	pr := b.process(r)
	code := exitCode(r.exitStatus)
	pr.ExitCode = &code
	e.Process = pr
	if p := b.procs[r.pid]; p != nil {
		p.exited = b.clock.wall(r.ts)
	}
	e.Message = "exit " + strconv.Itoa(r.pid) + ": " + strconv.Itoa(code)
	return e
}

// exitCode is a shell's view of a wait status: the exit status, or 128 +
// the signal that killed the process.
func exitCode(status int32) int {
	if sig := status & 0x7f; sig != 0 {
		return 128 + int(sig)
	}
	return int(status>>8) & 0xff
}

// stdioType names what a standard stream is from its inode mode and device.
func stdioType(s stdio) string {
	const (
		ifmt  = 0o170000
		ifsck = 0o140000
		ififo = 0o010000
		ifchr = 0o020000
		ifreg = 0o100000
	)
	switch s.mode & ifmt {
	case 0:
		return ""
	case ifsck:
		return "socket"
	case ififo:
		return "pipe"
	case ifreg:
		return "file"
	case ifchr:
		major, minor := s.rdev>>20, s.rdev&0xfffff
		switch {
		case major == 1 && minor == 3:
			return "null"
		case major == 4 || major == 5 || (major >= 136 && major <= 143):
			return "tty"
		}
	}
	return "other"
}

// resolve makes a path relative to dirfd absolute, reading the process's cwd
// or the directory fd while it is still alive; otherwise it stays relative.
func (b *builder) resolve(pid int, dirfd int32, path string) string {
	if path == "" || strings.HasPrefix(path, "/") {
		return path
	}
	var link string
	if dirfd == atFDCWD {
		link = "/proc/" + strconv.Itoa(pid) + "/cwd"
	} else {
		link = "/proc/" + strconv.Itoa(pid) + "/fd/" + strconv.Itoa(int(dirfd))
	}
	dir, err := b.readl(link)
	if err != nil || !strings.HasPrefix(dir, "/") {
		return path
	}
	return filepath.Join(dir, path)
}

func (b *builder) syscallField(r *record) *event.Syscall {
	return &event.Syscall{Name: syscallNames[r.sc], Args: syscallArgs(r), Return: r.ret, Errno: errnoName(r.ret)}
}

func outcome(ret int64) string {
	if ret < 0 {
		return "failure"
	}
	return "success"
}

func (b *builder) file(r *record) *event.Event {
	a := r.sargs
	f := &event.File{Path: r.path}
	fc := &event.FileChange{Kind: "changed"}
	typ := "change"
	dirfd := int32(atFDCWD)
	var modeBits uint64
	hasMode := false
	switch r.sc {
	case scOpenat, scOpenat2, scOpen, scCreat:
		flags, m := a[1], a[2]
		if r.sc == scOpenat || r.sc == scOpenat2 {
			dirfd, flags, m = int32(a[0]), a[2], a[3]
		}
		switch {
		case r.flags&flagReadSensitive != 0:
			fc.Operation, typ = "read", "access"
		case flags&0o100 != 0 && flags&0o200 != 0: // O_CREAT|O_EXCL: a new file
			fc.Operation, fc.Kind, typ = "create", "added", "creation"
		default:
			fc.Operation = "write"
		}
		if flags&0o100 != 0 {
			modeBits, hasMode = m, true
		}
	case scRename, scRenameat, scRenameat2:
		// file.path is the old name, file.target_path the new one.
		fc.Operation = "rename"
		newDir, oldDir := int32(atFDCWD), int32(atFDCWD)
		if r.sc != scRename {
			oldDir, newDir = int32(a[0]), int32(a[2])
		}
		f.TargetPath = b.resolve(r.pid, newDir, r.path)
		r.path, dirfd = r.path2, oldDir
	case scUnlink, scUnlinkat, scRmdir:
		fc.Operation, fc.Kind, typ = "unlink", "deleted", "deletion"
		if r.sc == scUnlinkat {
			dirfd = int32(a[0])
		}
	case scChmod, scFchmod, scFchmodat, scFchmodat2:
		fc.Operation = "chmod"
		modeBits, hasMode = a[1], true
		if r.sc == scFchmodat || r.sc == scFchmodat2 {
			dirfd, modeBits = int32(a[0]), a[2]
		}
	case scLink, scLinkat:
		fc.Operation, fc.Kind, typ = "link", "added", "creation"
		if r.sc == scLinkat {
			dirfd = int32(a[2])
			f.TargetPath = b.resolve(r.pid, int32(a[0]), r.path2)
		} else {
			f.TargetPath = b.resolve(r.pid, atFDCWD, r.path2)
		}
	case scSymlink, scSymlinkat:
		fc.Operation, fc.Kind, typ = "symlink", "added", "creation"
		if r.sc == scSymlinkat {
			dirfd = int32(a[1])
		}
		f.TargetPath = r.path2 // a symlink's target is stored as given
	case scTruncate, scFtruncate:
		fc.Operation = "truncate"
	}
	switch r.sc {
	case scFchmod, scFtruncate:
		// Only the file's last component came from the kernel: the fd's
		// link gives the whole path while the process lives.
		if p, err := b.readl("/proc/" + strconv.Itoa(r.pid) + "/fd/" + strconv.Itoa(int(int32(a[0])))); err == nil && strings.HasPrefix(p, "/") {
			f.Path = p
		}
	default:
		f.Path = b.resolve(r.pid, dirfd, r.path)
		if r.flags&flagResolved != 0 && r.path2 != "" {
			f.Path = r.path2
		}
	}
	if hasMode {
		fc.Mode = mode(modeBits)
		fc.Setuid = modeBits&0o4000 != 0
		fc.Setgid = modeBits&0o2000 != 0
		f.Mode = fc.Mode
		fc.Executable = modeBits&0o111 != 0
	}
	if fc.Operation == "read" || r.ret < 0 {
		// Nothing changed: a read, or a call the kernel refused. Consumers
		// that track changes by kind (dropped files) must not count it.
		fc.Kind = ""
	}
	e := b.base(r, event.TelemetryFile, "file")
	e.Event.Category = []string{"file"}
	e.Event.Type = []string{typ}
	e.Event.Action = "file-" + fc.Operation
	e.Event.Outcome = outcome(r.ret)
	e.File = f
	e.Process = b.process(r)
	e.Whalewatch.FileChange = fc
	e.Whalewatch.Syscall = b.syscallField(r)
	e.Message = fc.Operation + " " + f.Path
	if f.TargetPath != "" {
		e.Message += " -> " + f.TargetPath
	}
	if sc := e.Whalewatch.Syscall; sc.Errno != "" {
		e.Message += " (" + sc.Errno + ")"
	}
	return e
}

func addr(family uint16, b [16]byte) (netip.Addr, string) {
	switch family {
	case afInet:
		return netip.AddrFrom4([4]byte(b[:4])), "ipv4"
	case afInet6:
		a := netip.AddrFrom16(b)
		if a.Is4In6() {
			return a.Unmap(), "ipv6"
		}
		return a, "ipv6"
	}
	return netip.Addr{}, ""
}

func transport(proto uint16) string {
	switch proto {
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 0:
		return ""
	}
	return strconv.Itoa(int(proto))
}

func endpoint(a netip.Addr, port uint16) *event.Endpoint {
	if !a.IsValid() {
		return nil
	}
	return &event.Endpoint{IP: a.String(), Port: int(port)}
}

// connection is the telemetry of connect and accept: source.* is the
// container's end, destination.* the remote one.
func (b *builder) connection(r *record) *event.Event {
	e := b.base(r, event.TelemetryNetwork, "net")
	e.Event.Category = []string{"network"}
	e.Event.Type = []string{"connection", "start"}
	e.Process = b.process(r)
	e.Whalewatch.Syscall = b.syscallField(r)
	state, dir := "connect", "egress"
	if r.sc != scConnect {
		state, dir = "accept", "ingress"
	}
	e.Event.Action = "socket-" + state
	e.Whalewatch.Socket = &event.Socket{State: state}
	e.Event.Outcome = outcome(r.ret)
	if r.family == afUnix {
		e.Network = &event.Network{Transport: "unix", Direction: dir}
		e.Destination = &event.Endpoint{Address: r.path}
		e.Message = state + " unix:" + r.path
	} else {
		la, typ := addr(r.family, r.laddr)
		ra, _ := addr(r.family, r.raddr)
		e.Network = &event.Network{Transport: transport(r.proto), Type: typ, Direction: dir}
		e.Source = endpoint(la, r.lport)
		e.Destination = endpoint(ra, r.rport)
		e.Message = state + " " + netip.AddrPortFrom(ra, r.rport).String()
	}
	if errno := e.Whalewatch.Syscall.Errno; errno != "" {
		e.Message += " (" + errno + ")"
		if errno == "EINPROGRESS" {
			e.Event.Outcome = "unknown"
		}
	}
	return e
}

var tcpStates = map[int32]string{1: "established", 2: "syn_sent", 7: "closed", 10: "listen"}

func (b *builder) sockState(r *record) *event.Event {
	state, ok := tcpStates[r.newState]
	if !ok {
		return nil
	}
	e := b.base(r, event.TelemetryNetwork, "tcp-"+state)
	e.Event.Category = []string{"network"}
	e.Event.Action = "socket-" + state
	la, typ := addr(r.family, r.laddr)
	ra, _ := addr(r.family, r.raddr)
	e.Network = &event.Network{Transport: "tcp", Type: typ}
	e.Source = endpoint(la, r.lport)
	switch state {
	case "listen":
		e.Event.Type = []string{"start"}
		e.Network.Direction = "ingress"
	case "closed":
		e.Event.Type = []string{"connection", "end"}
		if tcpStates[r.oldState] == "listen" {
			e.Event.Type = []string{"end"}
		}
	default:
		e.Event.Type = []string{"connection", "start"}
	}
	if state != "listen" && ra.IsValid() && !(ra.IsUnspecified() && r.rport == 0) {
		e.Destination = endpoint(ra, r.rport)
	}
	e.Whalewatch.Socket = &event.Socket{State: state}
	e.Process = &event.Process{PID: r.pid, Name: r.comm, EntityID: b.entityID(r.pid, r.startNs)}
	e.Message = "tcp " + state + " " + netip.AddrPortFrom(la, r.lport).String()
	if e.Destination != nil {
		e.Message += " -> " + netip.AddrPortFrom(ra, r.rport).String()
	}
	return e
}

func (b *builder) syscall(r *record) *event.Event {
	// mark is what the detector's rules read of a signal's target: "pid1"
	// (the container's init), "all" (kill -1) or "foreign" (another
	// container's or the host's process).
	var mark string
	if r.sc == scKill || r.sc == scTkill || r.sc == scTgkill {
		// The kernel reports signals to pid 1 or -1, refused ones, and every
		// signal from a container sharing the host's pid namespace: of
		// those, the ones within the caller's own container are routine.
		target := int32(r.sargs[0])
		switch {
		case target == 1:
			mark = "pid1"
		case target == -1:
			mark = "all"
		case r.ret != -1 && b.containerOf != nil && target > 0:
			// Only a caller in the host's pid namespace gets here (see
			// the C filter), so target is a host pid.
			if c := b.containerOf(int(target)); c == r.cid {
				return nil
			}
			mark = "foreign"
		}
	}
	e := b.base(r, event.TelemetrySyscall, "syscall")
	name := syscallNames[r.sc]
	e.Event.Category = []string{"process"}
	if r.sc == scInitModule || r.sc == scFinitModule || r.sc == scDeleteModule {
		e.Event.Category = []string{"driver"}
	}
	e.Event.Type = []string{"change"}
	e.Event.Action = name
	e.Event.Outcome = outcome(r.ret)
	e.Process = b.process(r)
	sc := b.syscallField(r)
	if mark != "" {
		sc.Args = append(sc.Args, mark)
	}
	e.Whalewatch.Syscall = sc
	e.Message = name + "(" + strings.Join(sc.Args, ", ") + ") = " + strconv.FormatInt(r.ret, 10)
	if sc.Errno != "" {
		e.Message += " " + sc.Errno
	}
	return e
}
