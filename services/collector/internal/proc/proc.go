// Package proc reads what the collector reports about a process from
// /proc/<pid>: its container (from the cgroup file), executable, command
// line, parent, user and working directory.
//
// Everything read here is controlled by the process itself (argv, comm) or by
// whoever created its cgroup: the parsers accept any bytes, never panic and
// bound what they keep. Reads are bounded too (a command line can be
// megabytes): files are read into one reused buffer with a few raw syscalls,
// because a short-lived process is racing the reader to its exit.
package proc

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
)

// Limits of what is read and kept.
const (
	// MaxCmdline is how much of /proc/<pid>/cmdline is read: the bytes
	// event.Bound keeps at most (64 args of 1 KiB). The rest of a longer
	// command line is not read; Cmdline.Truncated says so.
	MaxCmdline = 64 << 10
	// maxSmallFile bounds cgroup, stat and status. A cgroup path is at most
	// PATH_MAX per hierarchy; a dozen v1 hierarchies fit.
	maxSmallFile = 64 << 10
)

// TicksPerSecond is USER_HZ, the unit of the start time in
// /proc/<pid>/stat; the kernel ABI fixes it at 100 on every architecture.
const TicksPerSecond = 100

// Stat is what the collector keeps of /proc/<pid>/stat.
type Stat struct {
	PID  int
	Comm string // the kernel's 15-byte command name, raw bytes
	PPID int
	// StartTicks is the start time in clock ticks after boot: with the pid it
	// identifies the process (pids are reused, start times are not).
	StartTicks uint64
}

var errStat = errors.New("malformed /proc stat")

// ParseStat reads /proc/<pid>/stat. comm may contain spaces and parentheses,
// so it is whatever lies between the first '(' and the last ')'.
func ParseStat(b []byte) (Stat, error) {
	open := bytes.IndexByte(b, '(')
	closing := bytes.LastIndexByte(b, ')')
	if open < 1 || closing < open {
		return Stat{}, errStat
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(b[:open])))
	if err != nil || pid <= 0 {
		return Stat{}, errStat
	}
	s := Stat{PID: pid, Comm: string(b[open+1 : closing])}
	// Fields after comm, numbered from 3 (state) as in proc(5).
	f := bytes.Fields(b[closing+1:])
	if len(f) < 20 {
		return Stat{}, errStat
	}
	if s.PPID, err = strconv.Atoi(string(f[4-3])); err != nil || s.PPID < 0 {
		return Stat{}, errStat
	}
	if s.StartTicks, err = strconv.ParseUint(string(f[22-3]), 10, 64); err != nil {
		return Stat{}, errStat
	}
	return s, nil
}

// Status is what the collector keeps of /proc/<pid>/status.
type Status struct {
	PPID int
	UID  string // real uid, decimal; empty when unknown
	EUID string // effective uid
}

// ParseStatus reads /proc/<pid>/status. The Name line is skipped: it is
// escaped by the kernel and stat's comm says the same raw.
func ParseStatus(b []byte) Status {
	var s Status
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		key, val, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		switch string(key) {
		case "PPid":
			if n, err := strconv.Atoi(string(bytes.TrimSpace(val))); err == nil && n >= 0 {
				s.PPID = n
			}
		case "Uid":
			f := bytes.Fields(val)
			if len(f) >= 2 && isDigits(f[0]) && isDigits(f[1]) && len(f[0]) <= 10 && len(f[1]) <= 10 {
				s.UID, s.EUID = string(f[0]), string(f[1])
			}
		}
	}
	return s
}

// ParseCmdline splits /proc/<pid>/cmdline into argv. Arguments are
// NUL-terminated; a process that rewrote its argv area (setproctitle) may
// leave one string with spaces and no NUL, which becomes one argument. The
// bytes are kept as they are, invalid UTF-8 included: event.Bound makes them
// valid.
func ParseCmdline(b []byte) []string {
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return nil
	}
	parts := bytes.Split(b, []byte{0})
	args := make([]string, len(parts))
	for i, p := range parts {
		args[i] = string(p)
	}
	return args
}

func isDigits(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

var errBootTime = errors.New("no btime line in /proc/stat")

// ParseBootTime reads the btime line of /proc/stat.
func ParseBootTime(b []byte) (int64, error) {
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if v, ok := bytes.CutPrefix(line, []byte("btime ")); ok {
			n, err := strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 64)
			if err != nil || n <= 0 {
				return 0, errBootTime
			}
			return n, nil
		}
	}
	return 0, errBootTime
}

// StdioKind classifies the target of a /proc/<pid>/fd/N link: "socket",
// "pipe", "tty" (a terminal: /dev/pts/*, /dev/tty*, /dev/console), "null",
// "file" (any other path) or "other" (anon inodes and the like). A shell
// whose stdin is a socket is served to the network, whatever it is called.
func StdioKind(link string) string {
	switch {
	case strings.HasPrefix(link, "socket:["):
		return "socket"
	case strings.HasPrefix(link, "pipe:["):
		return "pipe"
	case link == "/dev/null":
		return "null"
	case strings.HasPrefix(link, "/dev/pts/"), strings.HasPrefix(link, "/dev/tty"), link == "/dev/console", link == "/dev/ptmx":
		return "tty"
	case strings.HasPrefix(link, "/"):
		return "file"
	}
	return "other"
}
