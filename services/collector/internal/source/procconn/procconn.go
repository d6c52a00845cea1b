// Package procconn is the process source of the middle of the fallback
// chain: the netlink process connector (linux/cn_proc.h). It sees every fork,
// exec and exit on the host, however short-lived, attributes each process to
// its container through its cgroup, and publishes one process event per exec
// in a container, with its ancestry (from its own pid table) and what its
// standard streams are.
package procconn

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/services/collector/internal/proc"
	"github.com/whalewatch/whalewatch/services/collector/internal/source"
)

// Kernel ABI of the process connector (linux/connector.h, linux/cn_proc.h).
const (
	cnIdxProc         = 1
	cnValProc         = 1
	procCnMcastListen = 1
	procCnMcastIgnore = 2

	procEventNone = 0x00000000
	procEventFork = 0x00000001
	procEventExec = 0x00000002
	procEventExit = 0x80000000

	nlmsgHdrLen    = 16
	cnMsgLen       = 20
	procEventHdr   = 16 // what, cpu, timestamp_ns
	nlmsgNoop      = 1
	nlmsgError     = 2
	nlmsgDone      = 3
	nlmsgOverrun   = 4
	procSockRcvBuf = 8 << 20
)

// procEvent is one event of the process connector. Pids are the host's.
type procEvent struct {
	What      uint32
	CPU       uint32
	Seq       uint32 // per-CPU sequence number: a gap is events lost
	Ack       uint32
	Timestamp uint64 // CLOCK_MONOTONIC nanoseconds
	// PID, TGID: the process of exec and exit; the child of fork.
	PID, TGID int
	// ParentPID, ParentTGID: the parent of fork.
	ParentPID, ParentTGID int
	// Err is the error of an acknowledgement (What == procEventNone).
	Err uint32
}

var errShortMessage = errors.New("short netlink message")

// parseProcMessages calls fn for each process connector event in one netlink
// datagram. It accepts any bytes: a message it cannot read ends the datagram
// with an error, after the events before it were delivered.
func parseProcMessages(b []byte, fn func(procEvent)) error {
	ne := binary.NativeEndian
	for len(b) > 0 {
		if len(b) < nlmsgHdrLen {
			return errShortMessage
		}
		l := int(ne.Uint32(b[0:4]))
		typ := ne.Uint16(b[4:6])
		if l < nlmsgHdrLen || l > len(b) {
			return fmt.Errorf("netlink message length %d of %d bytes: %w", l, len(b), errShortMessage)
		}
		msg := b[nlmsgHdrLen:l]
		if a := (l + 3) &^ 3; a < len(b) {
			b = b[a:]
		} else {
			b = nil
		}
		switch typ {
		case nlmsgNoop, nlmsgOverrun:
			continue
		case nlmsgError:
			return errors.New("netlink error message")
		}
		if len(msg) < cnMsgLen {
			return errShortMessage
		}
		if ne.Uint32(msg[0:4]) != cnIdxProc || ne.Uint32(msg[4:8]) != cnValProc {
			continue // another connector
		}
		seq, ack := ne.Uint32(msg[8:12]), ne.Uint32(msg[12:16])
		dl := int(ne.Uint16(msg[16:18]))
		data := msg[cnMsgLen:]
		if dl > len(data) {
			return errShortMessage
		}
		data = data[:dl]
		if len(data) < procEventHdr {
			return errShortMessage
		}
		ev := procEvent{
			What:      ne.Uint32(data[0:4]),
			CPU:       ne.Uint32(data[4:8]),
			Timestamp: ne.Uint64(data[8:16]),
			Seq:       seq,
			Ack:       ack,
		}
		u := data[procEventHdr:]
		word := func(i int) (int, bool) {
			if len(u) < 4*(i+1) {
				return 0, false
			}
			return int(ne.Uint32(u[4*i:])), true
		}
		ok := true
		switch ev.What {
		case procEventNone:
			var e int
			e, ok = word(0)
			ev.Err = uint32(e)
		case procEventFork:
			var ok1, ok2, ok3, ok4 bool
			ev.ParentPID, ok1 = word(0)
			ev.ParentTGID, ok2 = word(1)
			ev.PID, ok3 = word(2)
			ev.TGID, ok4 = word(3)
			ok = ok1 && ok2 && ok3 && ok4
		case procEventExec, procEventExit:
			var ok1, ok2 bool
			ev.PID, ok1 = word(0)
			ev.TGID, ok2 = word(1)
			ok = ok1 && ok2
		}
		if !ok {
			return errShortMessage
		}
		fn(ev)
	}
	return nil
}

// procListenMessage is the request to start (op procCnMcastListen) or stop
// (procCnMcastIgnore) receiving process events.
func procListenMessage(seq uint32, op uint32) []byte {
	ne := binary.NativeEndian
	b := make([]byte, nlmsgHdrLen+cnMsgLen+4)
	ne.PutUint32(b[0:], uint32(len(b)))
	ne.PutUint16(b[4:], nlmsgDone)
	ne.PutUint32(b[8:], seq)
	c := b[nlmsgHdrLen:]
	ne.PutUint32(c[0:], cnIdxProc)
	ne.PutUint32(c[4:], cnValProc)
	ne.PutUint32(c[8:], seq)
	ne.PutUint16(c[16:], 4)
	ne.PutUint32(c[cnMsgLen:], op)
	return b
}

// procSocket is a listening process connector socket.
type procSocket interface {
	// Receive reads one datagram; errProcOverrun when the kernel dropped
	// events because the receive buffer was full, errProcTimeout when none
	// came for a while.
	Receive(buf []byte) (int, error)
	// Close releases the socket; no Receive may be running.
	Close() error
}

var (
	errProcOverrun = errors.New("process connector receive buffer overrun (ENOBUFS)")
	// errProcTimeout: nothing arrived for a while; the reader checks its
	// context and reads again.
	errProcTimeout = errors.New("process connector receive timeout")
)

// procMetrics are the process connector's metrics.
type procMetrics struct {
	attribution *prometheus.CounterVec
	lost        prometheus.Counter
	overruns    prometheus.Counter
	latency     prometheus.Histogram
}

func newProcMetrics(reg prometheus.Registerer) *procMetrics {
	m := &procMetrics{
		attribution: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whalewatch_collector_exec_attribution_total",
			Help: "Execs in containers seen by the process connector, by attribution: full (container, executable and command line), partial (container known, the process exited before its executable or command line was read), none (the process was gone before its container was known; not published).",
		}, []string{"result"}),
		lost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "whalewatch_collector_proc_events_lost_total",
			Help: "Process connector events lost (gaps in the kernel's per-CPU sequence numbers).",
		}),
		overruns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "whalewatch_collector_proc_overruns_total",
			Help: "Times the process connector socket's receive buffer overflowed (ENOBUFS).",
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "whalewatch_collector_exec_queue_latency_seconds",
			Help:    "From an exec (kernel timestamp) to its event entering the publish queue.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}),
	}
	for _, r := range []string{"full", "partial", "none"} {
		m.attribution.WithLabelValues(r)
	}
	reg.MustRegister(m.attribution, m.lost, m.overruns, m.latency)
	return m
}

// Source is the process connector as a source.Host: one goroutine
// reads every fork, exec and exit on the host and publishes one process event
// per exec in a container.
//
// The race with exit: a process may be gone before /proc/<pid> is read. So
// /proc is read in the receiving goroutine as soon as the exec arrives,
// the perishable files first (cmdline and exe vanish with the process's
// memory), and a pid → process table fed by fork events keeps each process's
// container (a child inherits its parent's cgroup): even a process gone
// before its exec is handled is attributed to its container.
type Source struct {
	host string
	open func() (procSocket, error)
	// priority raises the reading thread's scheduling priority until
	// restore; nil leaves it.
	priority func() (policy string, restore func())
	reader   *proc.Reader
	lookup   source.Containers
	log      *slog.Logger
	m        *procMetrics
	now      func() time.Time
	mono     func() uint64 // CLOCK_MONOTONIC ns, the clock of kernel timestamps

	procs     map[int]*procEntry // by tgid; owned by the Run goroutine
	lastSeq   map[uint32]uint32  // by CPU
	offset    int64              // wall - monotonic, ns
	bootTime  int64              // seconds since the epoch
	lastSweep time.Time

	pendMu  sync.Mutex
	pending []pendingEvent // events whose container is not yet in the cache

	listening atomic.Int64 // unix ns since when execs are received; 0 before
}

// procEntry is what the table keeps of a live process.
type procEntry struct {
	known     bool   // container is known ("" = a host process)
	container string // container id
	forkNs    uint64 // fork time, CLOCK_MONOTONIC ns; 0 when not seen
	ppid      int
	name, exe string // of its last exec, for its children's process.parent
	cmd       string // of its last exec, cut to maxAncestorCmd, for its descendants' ancestry
}

type pendingEvent struct {
	e        *event.Event
	deadline time.Time
}

const (
	// enrichWait is how long an event whose container is not yet in the
	// collector's cache (a process of a container that is just starting)
	// waits for it before it is published with the container id alone.
	enrichWait  = 2 * time.Second
	maxPending  = 10000
	sweepPeriod = 30 * time.Second
	maxProcs    = 1 << 20
	// maxAncestorCmd bounds the command line the table keeps per process
	// (a million processes at most).
	maxAncestorCmd = 256
)

// Run reads the connector until ctx ends or the socket fails. It locks its
// goroutine to an OS thread whose priority it raises (see priority).
func (p *Source) Run(ctx context.Context, emit source.Emit) error {
	sock, err := p.open()
	if err != nil {
		return fmt.Errorf("process connector: %w", err)
	}
	defer sock.Close()
	policy := "unchanged"
	if p.priority != nil {
		var restore func()
		policy, restore = p.priority()
		defer restore()
	}
	p.log.Info("process connector listening", "thread_priority", policy)
	if bt, err := p.reader.BootTime(); err == nil {
		p.bootTime = bt
	}
	p.procs = map[int]*procEntry{}
	p.lastSeq = map[uint32]uint32{}
	p.clockSync()
	p.lastSweep = p.now()
	p.listening.Store(p.lastSweep.UnixNano())
	defer p.listening.Store(0)

	done := make(chan struct{})
	defer func() { <-done }()
	ectx, stop := context.WithCancel(ctx)
	defer stop() // before waiting for done
	go func() {
		defer close(done)
		p.enrichLoop(ectx, emit)
	}()

	var lastOverrunLog time.Time
	overruns := 0
	buf := make([]byte, 64<<10)
	for {
		n, err := sock.Receive(buf)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errProcTimeout) {
			continue
		}
		if errors.Is(err, errProcOverrun) {
			p.m.overruns.Inc()
			overruns++
			if now := p.now(); now.Sub(lastOverrunLog) >= 10*time.Second {
				p.log.Warn("process connector overrun: events lost", "overruns_since_last_log", overruns)
				lastOverrunLog, overruns = now, 0
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("process connector: %w", err)
		}
		if err := parseProcMessages(buf[:n], func(ev procEvent) { p.handle(ev, emit) }); err != nil {
			p.log.Debug("unreadable process connector message", "err", err)
		}
		if now := p.now(); now.Sub(p.lastSweep) > sweepPeriod {
			p.sweep()
			p.clockSync()
			p.lastSweep = now
		}
	}
}

func (p *Source) handle(ev procEvent, emit source.Emit) {
	if ev.What != procEventNone {
		if last, ok := p.lastSeq[ev.CPU]; ok && ev.Seq-last > 1 && ev.Seq-last < 1<<31 {
			p.m.lost.Add(float64(ev.Seq - last - 1))
		}
		p.lastSeq[ev.CPU] = ev.Seq
	}
	switch ev.What {
	case procEventFork:
		if ev.PID != ev.TGID {
			return // a new thread, not a new process
		}
		p.fork(ev)
	case procEventExec:
		p.exec(ev, emit)
	case procEventExit:
		if ev.PID == ev.TGID {
			delete(p.procs, ev.TGID)
		}
	}
}

// fork records the child with its parent's container. A parent the table
// does not know (it predates the collector) is classified once by reading
// the child's cgroup, and remembered with it.
func (p *Source) fork(ev procEvent) {
	e := &procEntry{forkNs: ev.Timestamp, ppid: ev.ParentTGID}
	if parent := p.procs[ev.ParentTGID]; parent != nil && parent.known {
		e.known, e.container = true, parent.container
	} else if id, ok := p.containerAtFork(ev); ok {
		e.known, e.container = true, id
		if parent == nil && len(p.procs) < maxProcs {
			p.procs[ev.ParentTGID] = &procEntry{known: true, container: id}
		}
	}
	if len(p.procs) < maxProcs {
		p.procs[ev.TGID] = e
	}
}

// containerAtFork reads the child's cgroup, or its parent's when the child
// is already gone: at fork they are the same.
func (p *Source) containerAtFork(ev procEvent) (string, bool) {
	if id, ok := p.reader.ContainerID(ev.TGID); ok {
		return id, true
	}
	return p.reader.ContainerID(ev.ParentTGID)
}

// exec reads the process and publishes it when it runs in a container. Host
// processes cost one small read (their cgroup): a process that a container
// runtime moves into a container (runc init for docker exec) is forked on
// the host, so a host classification is always checked again at exec.
func (p *Source) exec(ev procEvent, emit source.Emit) {
	pid := ev.TGID
	e := p.procs[pid]
	if e == nil {
		e = &procEntry{}
		if len(p.procs) < maxProcs {
			p.procs[pid] = e
		}
	}
	var x proc.Exec
	read := false
	if e.known && e.container != "" {
		// Known container: the perishable files first, then confirm the
		// cgroup (a privileged process may move).
		x, read = p.reader.ReadExec(pid), true
		if id, ok := p.reader.ContainerID(pid); ok && id != "" {
			e.container = id
		}
	} else {
		id, ok := p.reader.ContainerID(pid)
		switch {
		case ok:
			e.known, e.container = true, id
		case !e.known:
			p.m.attribution.WithLabelValues("none").Inc()
			return
		}
		if e.container == "" {
			return // a host process
		}
	}
	if !read {
		x = p.reader.ReadExec(pid)
	}
	ev2 := p.execEvent(pid, ev, e, x)
	result := "full"
	if ev2.Process.Executable == "" || len(ev2.Process.Args) == 0 {
		result = "partial"
	}
	p.m.attribution.WithLabelValues(result).Inc()
	if ci, ok := p.lookup.Lookup(e.container); ok {
		ev2.Container = ci.ECS()
		p.publish(ev2, ev, emit)
		return
	}
	ev2.Container = &event.Container{ID: e.container}
	p.pendMu.Lock()
	full := len(p.pending) >= maxPending
	if !full {
		p.pending = append(p.pending, pendingEvent{ev2, p.now().Add(enrichWait)})
	}
	p.pendMu.Unlock()
	if full {
		p.publish(ev2, ev, emit)
	}
}

func (p *Source) publish(e *event.Event, ev procEvent, emit source.Emit) {
	if ns := p.monoNow() - int64(ev.Timestamp); ns >= 0 {
		p.m.latency.Observe(float64(ns) / 1e9)
	}
	emit(e)
}

func (p *Source) monoNow() int64 { return int64(p.mono()) }

// enrichLoop publishes the pending events once their container is in the
// cache or their wait is over; at the end, all of them.
func (p *Source) enrichLoop(ctx context.Context, emit source.Emit) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
		now := p.now()
		p.pendMu.Lock()
		var ready []*event.Event
		keep := p.pending[:0]
		for _, pe := range p.pending {
			ci, known := p.lookup.Lookup(pe.e.Container.ID)
			switch {
			case known:
				pe.e.Container = ci.ECS()
				ready = append(ready, pe.e)
			case ctx.Err() != nil || now.After(pe.deadline):
				ready = append(ready, pe.e)
			default:
				keep = append(keep, pe)
			}
		}
		clear(p.pending[len(keep):])
		p.pending = keep
		p.pendMu.Unlock()
		for _, e := range ready {
			emit(e)
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// execEvent builds the process telemetry of one exec. Its id derives from
// the host, the pid, the process's start time and the exec's kernel
// timestamp: unique per exec, including a second exec by the same process.
func (p *Source) execEvent(pid int, ev procEvent, e *procEntry, x proc.Exec) *event.Event {
	now := p.now()
	at := p.wall(ev.Timestamp)
	pr := &event.Process{
		PID:              pid,
		Executable:       x.Executable,
		Args:             x.Args,
		ArgsCount:        len(x.Args),
		CommandLine:      strings.Join(x.Args, " "),
		WorkingDirectory: x.Cwd,
	}
	switch {
	case len(x.Args) > 0 && x.Args[0] != "":
		pr.Name = source.ProcessName(x.Args[0])
	case x.StatOK:
		pr.Name = x.Stat.Comm
	case x.Executable != "":
		pr.Name = source.ProcessName(x.Executable)
	}
	e.name, e.exe = pr.Name, pr.Executable
	e.cmd = pr.CommandLine
	if len(e.cmd) > maxAncestorCmd {
		e.cmd = e.cmd[:maxAncestorCmd]
	}
	ppid := e.ppid
	switch {
	case x.StatusOK && x.Status.PPID > 0:
		ppid = x.Status.PPID
	case x.StatOK && x.Stat.PPID > 0:
		ppid = x.Stat.PPID
	}
	if ppid > 0 {
		pr.Parent = &event.Parent{PID: ppid}
		if pe := p.procs[ppid]; pe != nil {
			pr.Parent.Name, pr.Parent.Executable = pe.name, pe.exe
		}
	}
	ancestry := p.ancestry(ppid, e.container)
	if x.StatusOK && x.Status.EUID != "" {
		pr.User = &event.User{ID: x.Status.EUID}
	}
	var startTicks uint64
	if x.StatOK {
		startTicks = x.Stat.StartTicks
	}
	switch {
	case e.forkNs > 0:
		pr.Start = p.wall(e.forkNs)
	case x.StatOK && p.bootTime > 0:
		pr.Start = time.Unix(p.bootTime, 0).Add(time.Duration(startTicks) * time.Second / proc.TicksPerSecond).UTC()
	}
	start := strconv.FormatUint(startTicks, 10)
	if startTicks == 0 && e.forkNs > 0 {
		start = "fork:" + strconv.FormatUint(e.forkNs, 10)
	}
	msg := pr.CommandLine
	if msg == "" {
		msg = "[" + pr.Name + "]"
	}
	return &event.Event{
		Timestamp: at,
		Message:   "exec " + strconv.Itoa(pid) + ": " + msg,
		Event: event.Meta{
			ID:       event.DeriveID(p.host, source.ModeProcConnector, strconv.Itoa(pid), start, strconv.FormatUint(ev.Timestamp, 10)),
			Kind:     event.KindEvent,
			Category: []string{"process"},
			Type:     []string{"start"},
			Action:   "exec",
			Dataset:  event.TelemetryProcess.Dataset(),
			Module:   event.Module,
			Created:  now.UTC(),
		},
		Host:    event.Host{Name: p.host},
		Process: pr,
		Whalewatch: event.Whalewatch{
			SchemaVersion: event.SchemaVersion,
			Telemetry:     event.TelemetryProcess,
			Source:        source.ModeProcConnector,
			Ancestry:      ancestry,
			Stdio:         stdio(x.Stdio),
		},
	}
}

// ancestry walks the pid table up from ppid while the ancestors are in the
// same container: parent first, at most event.MaxAncestry. The walk stops at
// a process the table does not know (it predates the collector) or at the
// container's boundary (runc, the shim: the host's business).
func (p *Source) ancestry(ppid int, container string) []event.Ancestor {
	var out []event.Ancestor
	seen := map[int]bool{}
	for pid := ppid; pid > 0 && len(out) < event.MaxAncestry && !seen[pid]; {
		seen[pid] = true
		pe := p.procs[pid]
		if pe == nil || !pe.known || pe.container != container {
			break
		}
		out = append(out, event.Ancestor{PID: pid, Name: pe.name, Executable: pe.exe, CommandLine: pe.cmd})
		pid = pe.ppid
	}
	return out
}

// stdio is whalewatch.stdio of what ReadExec found; nil when nothing was
// readable.
func stdio(k [3]string) *event.Stdio {
	if k == [3]string{} {
		return nil
	}
	return &event.Stdio{Stdin: k[0], Stdout: k[1], Stderr: k[2]}
}

// wall converts a kernel CLOCK_MONOTONIC timestamp to wall-clock time.
func (p *Source) wall(ns uint64) time.Time {
	return time.Unix(0, int64(ns)+p.offset).UTC()
}

func (p *Source) clockSync() {
	p.offset = p.now().UnixNano() - p.monoNow()
}

// sweep forgets processes whose exit was lost (overruns).
func (p *Source) sweep() {
	for pid := range p.procs {
		if !p.reader.Alive(pid) {
			delete(p.procs, pid)
		}
	}
}

// New returns the process connector source on the host's process connector;
// it has not opened the socket yet (Run does). Probe first to know whether it
// can work here. lookup is the collector's container cache.
func New(host string, lookup source.Containers, log *slog.Logger, reg prometheus.Registerer) *Source {
	return &Source{
		host:     host,
		open:     openProcConnector,
		priority: raiseReceivePriority,
		reader:   proc.NewReader("/proc"),
		lookup:   lookup,
		log:      log.With("process_source", source.ModeProcConnector),
		m:        newProcMetrics(reg),
		now:      time.Now,
		mono:     monotonicNow,
	}
}

// Probe tells whether the process connector works here: it opens the socket,
// subscribes, waits for the kernel's acknowledgement and closes. It fails
// without root (CAP_NET_ADMIN) and outside the host's PID namespace.
func Probe() error {
	s, err := openProcConnector()
	if err != nil {
		return err
	}
	return s.Close()
}

// Listening is since when execs are received; zero before Run listens and
// after it returned. An exec in a container started before this was missed:
// the wiring takes one docker top inventory of such containers.
func (p *Source) Listening() time.Time {
	ns := p.listening.Load()
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}
