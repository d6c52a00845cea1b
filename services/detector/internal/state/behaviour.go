package state

import (
	"crypto/sha256"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// Per-container memory of processes, listeners, configuration and recent
// activity. Everything here is bounded per container (see the constants and
// Config.EvidenceItems), so a container's worst case is a fixed size and the
// Recorder's is MaxContainers times it (docs/PERFORMANCE.md works it out).
const (
	// maxProcesses bounds a container's process table (pid → what ran).
	maxProcesses = 64
	// maxListeners bounds the pids remembered as network listeners.
	maxListeners = 64
	// maxEvidenceText bounds one item of evidence (a command line, a log
	// line, a file change, a connection).
	maxEvidenceText = 256
)

// proc is one process of a container as the Recorder saw it at exec.
type proc struct {
	seq                     uint64 // exec order in the container: higher is later
	ppid                    int
	name, exe, commandLine  string
	newToImage              bool // its executable was new to the image's baseline
	healthcheck             bool // it is the container's health check, or runs for it
	listener, knownListener bool // it listens or accepts on the network; on a port the baseline knows
}

// ring keeps the last n strings added, oldest first.
type ring struct {
	items []string
	next  int
}

func (r *ring) add(s string, n int) {
	if n <= 0 {
		return
	}
	s = event.Truncate(s, maxEvidenceText)
	if len(r.items) < n {
		r.items = append(r.items, s)
		return
	}
	r.items[r.next] = s
	r.next = (r.next + 1) % n
}

// list returns the items, oldest first, as a new slice.
func (r *ring) list() []string {
	if len(r.items) == 0 {
		return nil
	}
	out := make([]string, 0, len(r.items))
	out = append(out, r.items[r.next:]...)
	return append(out, r.items[:r.next]...)
}

// behaviour is the part of a container's state this file manages.
type behaviour struct {
	procs   map[int]*proc
	procSeq uint64

	configKnown bool
	// healthcheck identifies the argv Docker runs for the configured health
	// check (healthcheckKey); zero when there is none. A digest, so that a
	// long check costs 32 bytes.
	healthcheck [sha256.Size]byte
	hasCheck    bool

	logs, files, connections, execs ring
}

func (b *behaviour) remember(pid int, p *proc) {
	if b.procs == nil {
		b.procs = map[int]*proc{}
	}
	if _, ok := b.procs[pid]; !ok && len(b.procs) >= maxProcesses {
		oldest, seq := 0, uint64(0)
		for id, q := range b.procs {
			if oldest == 0 || q.seq < seq {
				oldest, seq = id, q.seq
			}
		}
		delete(b.procs, oldest)
	}
	b.procSeq++
	p.seq = b.procSeq
	b.procs[pid] = p
}

// config remembers what of a container's configuration later events are
// compared with.
func (r *Recorder) config(c *container, e *event.Event) {
	cfg := e.Whalewatch.Config
	if cfg == nil {
		return
	}
	c.configKnown = true
	c.healthcheck, c.hasCheck = healthcheckKey(cfg.Healthcheck)
}

// healthcheckKey is the digest of the argv Docker runs for the health check
// test hc: ["CMD-SHELL", cmd] runs `/bin/sh -c cmd`, ["CMD", args...] runs
// args; false when hc is no check.
func healthcheckKey(hc []string) ([sha256.Size]byte, bool) {
	if len(hc) < 2 {
		return [sha256.Size]byte{}, false
	}
	switch hc[0] {
	case "CMD-SHELL":
		return argvKey([]string{"sh", "-c", hc[1]}), true
	case "CMD":
		return argvKey(hc[1:]), true
	}
	return [sha256.Size]byte{}, false
}

// argvKey digests an argv, its program by base name (sh and /bin/sh are
// the same health check).
func argvKey(argv []string) [sha256.Size]byte {
	h := sha256.New()
	for i, a := range argv {
		if i == 0 {
			a = path.Base(a)
		}
		h.Write([]byte(a))
		h.Write([]byte{0})
	}
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

// isHealthcheck reports whether argv is the container's health check.
func (c *container) isHealthcheck(argv []string) bool {
	return c.hasCheck && len(argv) > 0 && argvKey(argv) == c.healthcheck
}

// behaviourOfExec fills the snapshot fields about an exec and records it in
// the process table and the evidence.
func (r *Recorder) behaviourOfExec(c *container, e *event.Event, exe string, s *Snapshot) {
	p := e.Process
	s.ConfigKnown = c.configKnown
	ppid := 0
	if p.Parent != nil {
		ppid = p.Parent.PID
	}
	if ppid == 0 && len(e.Whalewatch.Ancestry) > 0 {
		ppid = e.Whalewatch.Ancestry[0].PID
	}
	parent := c.procs[ppid]
	if ppid > 0 && parent != nil && parent.listener {
		s.ParentServesNetwork = true
		s.ParentKnownService = parent.knownListener
	}
	var old *proc
	if p.PID > 0 {
		old = c.procs[p.PID]
	}
	// Docker's exec of the health check (lifecycle), the same process as the
	// kernel sensor or the process connector saw it, and what it runs (the
	// wget of `sh -c 'wget ...'`, forked or exec'd in its place).
	s.Healthcheck = c.isHealthcheck(p.Args) || ppid > 0 && parent != nil && parent.healthcheck ||
		old != nil && old.healthcheck
	cmd := p.CommandLine
	if cmd == "" {
		cmd = strings.Join(p.Args, " ")
	}
	if p.PID > 0 {
		old := c.procs[p.PID]
		np := &proc{ppid: ppid, name: event.Truncate(p.Name, event.MaxName), exe: event.Truncate(exe, maxEvidenceText),
			commandLine: event.Truncate(cmd, maxEvidenceText), newToImage: s.NewProcess, healthcheck: s.Healthcheck}
		if old != nil { // an exec replaces the program, not the process: it still listens
			np.listener, np.knownListener = old.listener, old.knownListener
			if np.ppid == 0 {
				np.ppid = old.ppid
			}
		}
		c.remember(p.PID, np)
	}
	if !s.Healthcheck { // not evidence: it runs every few seconds and would push out what matters
		c.execs.add(strconv.Itoa(p.PID)+" "+cmd, r.cfg.EvidenceItems)
	}
}

// processEnded forgets a process that exited.
func (c *container) processEnded(e *event.Event) {
	if e.Process != nil && e.Process.PID > 0 && slices.Contains(e.Event.Type, "end") {
		delete(c.procs, e.Process.PID)
	}
}

// listener marks the process of a listen or accept as serving the network.
func (c *container) listener(e *event.Event, known bool) {
	p := e.Process
	if p == nil || p.PID <= 0 {
		return
	}
	q := c.procs[p.PID]
	if q == nil {
		listeners := 0
		for _, x := range c.procs {
			if x.listener {
				listeners++
			}
		}
		if listeners >= maxListeners {
			return
		}
		q = &proc{name: event.Truncate(p.Name, event.MaxName), exe: event.Truncate(p.Executable, maxEvidenceText),
			commandLine: event.Truncate(p.CommandLine, maxEvidenceText)}
		c.remember(p.PID, q)
	}
	q.listener = true
	q.knownListener = q.knownListener || known
}

// topProcess is the process a resource sample is blamed on: the one the
// sample names (a collector that samples per process), else the container's
// latest exec still running, which is what a busy loop or a miner started
// by an intruder usually is.
func (c *container) topProcess(e *event.Event) (exe string, isNew bool) {
	if p := e.Process; p != nil && (p.Executable != "" || len(p.Args) > 0) {
		exe = p.Executable
		if exe == "" {
			exe = p.Args[0]
		}
		if q := c.procs[p.PID]; p.PID > 0 && q != nil {
			isNew = q.newToImage
		}
		return exe, isNew
	}
	var latest *proc
	for _, q := range c.procs {
		if q.exe != "" && (latest == nil || q.seq > latest.seq) {
			latest = q
		}
	}
	if latest == nil {
		return "", false
	}
	return latest.exe, latest.newToImage
}

// Evidence is what the Recorder holds for a threat on container id: its
// recent log lines, file changes, connections and execs (bounded), and the
// ancestry of pid from the process table when the event did not carry one.
func (r *Recorder) Evidence(id string, pid int) (*event.Evidence, []event.Ancestor) {
	r.mu.Lock()
	defer r.mu.Unlock()
	el, ok := r.containers[id]
	if !ok {
		return nil, nil
	}
	c := el.Value.(*container)
	ev := &event.Evidence{
		LogLines:    c.logs.list(),
		FileChanges: c.files.list(),
		Connections: c.connections.list(),
		Processes:   c.execs.list(),
	}
	if len(ev.LogLines)+len(ev.FileChanges)+len(ev.Connections)+len(ev.Processes) == 0 {
		ev = nil
	}
	return ev, c.ancestry(pid)
}

// ancestry walks the process table from pid's parent up, at most
// event.MaxAncestry steps (a cycle of reused pids ends it too).
func (c *container) ancestry(pid int) []event.Ancestor {
	p := c.procs[pid]
	if p == nil {
		return nil
	}
	var out []event.Ancestor
	seen := map[int]bool{pid: true}
	for ppid := p.ppid; ppid > 0 && !seen[ppid] && len(out) < event.MaxAncestry; {
		seen[ppid] = true
		q := c.procs[ppid]
		if q == nil {
			out = append(out, event.Ancestor{PID: ppid})
			break
		}
		out = append(out, event.Ancestor{PID: ppid, Name: q.name, Executable: q.exe, CommandLine: q.commandLine})
		ppid = q.ppid
	}
	return out
}

// evidenceOf records what e adds to its container's evidence.
func (r *Recorder) evidenceOf(c *container, e *event.Event) {
	n := r.cfg.EvidenceItems
	switch e.Whalewatch.Telemetry {
	case event.TelemetryLog:
		if l := e.Whalewatch.Log; l != nil {
			lines := l.Lines
			if len(lines) > n {
				lines = lines[len(lines)-n:]
			}
			for _, line := range lines {
				c.logs.add(line, n)
			}
		}
	case event.TelemetryFile:
		if f := e.File; f != nil {
			op := ""
			if fc := e.Whalewatch.FileChange; fc != nil {
				op = fc.Operation
				if op == "" {
					op = fc.Kind
				}
			}
			item := op + " " + f.Path
			if f.TargetPath != "" {
				item += " -> " + f.TargetPath
			}
			if e.Event.Outcome == "failure" {
				item += " (refused)"
			}
			c.files.add(item, n)
		}
	case event.TelemetryNetwork:
		if s := e.Whalewatch.Socket; s != nil {
			item := s.State
			switch {
			case e.Destination != nil && (e.Destination.IP != "" || e.Destination.Address != ""):
				host := e.Destination.IP
				if host == "" {
					host = e.Destination.Address
				}
				item += " " + hostPort(host, e.Destination.Port)
			case e.Source != nil:
				item += " " + hostPort(e.Source.IP, e.Source.Port)
			}
			if e.Network != nil && e.Network.Transport != "" {
				item += " " + e.Network.Transport
			}
			if e.Event.Outcome == "failure" {
				item += " (refused)"
			}
			c.connections.add(item, n)
		}
	}
}

func hostPort(host string, port int) string {
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return host + ":" + strconv.Itoa(port)
}

// cpuDip is how long CPU may stay below the threshold without ending a run
// of high CPU. Bursts are told apart by their length, not by dips: a burst
// under 10 s followed by 10 s of calm is over.
const cpuDip = 10 * time.Second

// cpuGap is how long without a resource sample breaks a run of high CPU:
// the samples come every few seconds to half a minute, so a longer gap means
// samples were lost and the run cannot be said to have lasted.
func cpuGap(interval float64) time.Duration {
	return max(90*time.Second, time.Duration(3*interval*float64(time.Second)))
}
