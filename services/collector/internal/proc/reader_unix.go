//go:build unix

package proc

import (
	"errors"
	"strconv"
	"syscall"
)

// Reader reads /proc/<pid> files with raw syscalls into one reused buffer.
// It is not safe for concurrent use.
type Reader struct {
	root string
	buf  []byte
	path []byte
}

// NewReader reads below root, normally "/proc".
func NewReader(root string) *Reader {
	return &Reader{root: root, buf: make([]byte, MaxCmdline+1)}
}

// Exec is what ReadExec found of a process; a field is zero when its file
// could not be read (the process exited, or is a zombie whose memory is
// gone: then cmdline is empty and exe unreadable).
type Exec struct {
	Args          []string // nil when unreadable or empty
	ArgsTruncated bool     // cmdline was longer than MaxCmdline
	Executable    string
	Cwd           string
	Stat          Stat
	StatOK        bool
	Status        Status
	StatusOK      bool
	// Stdio is the kind of file descriptors 0, 1 and 2 (StdioKind); "" when
	// unreadable.
	Stdio [3]string
}

// ContainerID reads pid's cgroup file; ok is false when it could not be read
// (the process is gone).
func (r *Reader) ContainerID(pid int) (id string, ok bool) {
	b, err := r.read(pid, "cgroup", maxSmallFile)
	if err != nil {
		return "", false
	}
	return ContainerID(b), true
}

// ReadExec reads what the collector reports of a process that has just
// called execve, most perishable first: the command line and executable
// vanish with the process's memory at exit, stat and status last until it is
// reaped.
func (r *Reader) ReadExec(pid int) Exec {
	var e Exec
	if b, err := r.read(pid, "cmdline", MaxCmdline+1); err == nil {
		if len(b) > MaxCmdline {
			b, e.ArgsTruncated = b[:MaxCmdline], true
		}
		e.Args = ParseCmdline(b)
	}
	e.Executable, _ = r.readlink(pid, "exe")
	for fd, name := range [3]string{"fd/0", "fd/1", "fd/2"} {
		if l, err := r.readlink(pid, name); err == nil {
			e.Stdio[fd] = StdioKind(l)
		}
	}
	if b, err := r.read(pid, "stat", maxSmallFile); err == nil {
		e.Stat, err = ParseStat(b)
		e.StatOK = err == nil
	}
	if b, err := r.read(pid, "status", maxSmallFile); err == nil {
		e.Status, e.StatusOK = ParseStatus(b), true
	}
	e.Cwd, _ = r.readlink(pid, "cwd")
	return e
}

// Stat reads pid's stat file.
func (r *Reader) Stat(pid int) (Stat, error) {
	b, err := r.read(pid, "stat", maxSmallFile)
	if err != nil {
		return Stat{}, err
	}
	return ParseStat(b)
}

// BootTime reads the boot time (seconds since the epoch) from <root>/stat.
func (r *Reader) BootTime() (int64, error) {
	b, err := r.readPath(r.root+"/stat", maxSmallFile)
	if err != nil {
		return 0, err
	}
	return ParseBootTime(b)
}

func (r *Reader) pidPath(pid int, file string) string {
	r.path = append(r.path[:0], r.root...)
	r.path = append(r.path, '/')
	r.path = strconv.AppendInt(r.path, int64(pid), 10)
	r.path = append(r.path, '/')
	r.path = append(r.path, file...)
	return string(r.path)
}

func (r *Reader) read(pid int, file string, limit int) ([]byte, error) {
	return r.readPath(r.pidPath(pid, file), limit)
}

// readPath reads at most limit bytes of a file into r.buf.
func (r *Reader) readPath(path string, limit int) ([]byte, error) {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer syscall.Close(fd)
	buf := r.buf[:min(limit, len(r.buf))]
	n := 0
	for n < len(buf) {
		m, err := syscall.Read(fd, buf[n:])
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if m == 0 {
			break
		}
		n += m
	}
	return buf[:n], nil
}

func (r *Reader) readlink(pid int, file string) (string, error) {
	var b [4096]byte
	n, err := syscall.Readlink(r.pidPath(pid, file), b[:])
	if err != nil {
		return "", err
	}
	return string(b[:n]), nil
}

// Alive reports whether /proc/<pid> exists.
func (r *Reader) Alive(pid int) bool {
	return syscall.Access(r.pidPath(pid, ""), 0) == nil
}
