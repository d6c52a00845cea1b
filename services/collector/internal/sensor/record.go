package sensor

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Record kinds, as sensor.bpf.c writes them (K_*).
const (
	kindExec      = 1
	kindFork      = 2
	kindExit      = 3
	kindSyscall   = 4
	kindSockState = 5
)

// Sizes and field offsets of the kernel's records (struct hdr, exec_rec, ...
// in sensor.bpf.c). record_test.go checks them against the BTF of the
// embedded object, so a change on one side only fails the tests.
const (
	hdrSize       = 120
	execSize      = 2720
	forkSize      = 136
	exitSize      = 128
	sysSize       = 1312
	sockStateSize = 176

	cidLen   = 64
	commLen  = 16
	pathLen  = 512
	auxLen   = 64
	argsLen  = 2048
	offCID   = 40
	offComm  = 104
	offStart = 32

	offExecPPID     = 120
	offExecArgsLen  = 124
	offExecArgsFull = 128
	offExecMode     = 132
	offExecRdev     = 140
	offExecFilename = 156
	offExecArgs     = 668

	offForkChild      = 120
	offForkChildStart = 128

	offExitCode = 120

	offSysSC     = 120
	offSysFlags  = 124
	offSysRet    = 128
	offSysArgs   = 136
	offSysFamily = 184
	offSysLPort  = 186
	offSysRPort  = 188
	offSysProto  = 190
	offSysLAddr  = 192
	offSysRAddr  = 208
	offSysAux    = 224
	offSysPath   = 288
	offSysPath2  = 800

	offSockOld    = 128
	offSockNew    = 132
	offSockFamily = 136
	offSockSPort  = 138
	offSockDPort  = 140
	offSockProto  = 142
	offSockSAddr  = 144
	offSockDAddr  = 160
)

// flagReadSensitive marks an open for reading of a sensitive path
// (F_READ_SENSITIVE).
const flagReadSensitive = 1

// flagResolved: path2 is the opened file's absolute path, from its dentries
// (the path given was relative or had ".." components).
const flagResolved = 2

// stdio is one standard stream of a process at exec.
type stdio struct {
	mode uint16 // S_IFMT bits and permissions; 0 when the fd is closed
	rdev uint32 // kernel dev_t (major << 20 | minor) of a device
}

// record is one decoded kernel record. Strings are valid UTF-8 and bounded
// by the kernel's buffers; fields of other kinds are zero.
type record struct {
	kind    uint32
	ts      uint64 // CLOCK_MONOTONIC ns
	pid     int
	tid     int
	uid     uint32
	gid     uint32
	startNs uint64
	cid     string
	comm    string

	// exec
	ppid          int
	filename      string
	args          []string
	argsTruncated bool
	stdio         [3]stdio

	// fork
	child      int
	childStart uint64

	// exit
	exitStatus int32

	// syscall
	sc           uint32
	flags        uint32
	ret          int64
	sargs        [6]uint64
	family       uint16
	lport, rport uint16 // host order
	proto        uint16 // IPPROTO_* of a connect or accept
	laddr, raddr [16]byte
	path, path2  string
	aux          string

	// TCP state change (family, lport, rport, laddr, raddr shared with syscall)
	oldState, newState int32
	protocol           uint16
}

var errRecord = errors.New("malformed sensor record")

var le = binary.LittleEndian

// decode parses one ring buffer sample. A sample that is short, of an
// unknown kind or carries an impossible value is an error; the reader counts
// it and goes on.
func decode(b []byte, r *record) error {
	*r = record{}
	if len(b) < hdrSize {
		return fmt.Errorf("%w: %d bytes", errRecord, len(b))
	}
	r.kind = le.Uint32(b[8:])
	r.ts = le.Uint64(b[0:])
	r.pid = int(le.Uint32(b[12:]))
	r.tid = int(le.Uint32(b[16:]))
	r.uid = le.Uint32(b[20:])
	r.gid = le.Uint32(b[24:])
	r.startNs = le.Uint64(b[offStart:])
	cid := cstring(b[offCID : offCID+cidLen])
	if !isContainerID(cid) {
		return fmt.Errorf("%w: container id %q", errRecord, cid)
	}
	r.cid = cid
	r.comm = text(cstring(b[offComm : offComm+commLen]))
	if r.pid <= 0 || r.pid > 1<<22 {
		return fmt.Errorf("%w: pid %d", errRecord, r.pid)
	}
	// Exec records end after the argv read, syscall records with one path
	// after it: the kernel sends what it filled.
	need := map[uint32]int{kindExec: offExecArgs, kindFork: forkSize, kindExit: exitSize, kindSyscall: offSysPath + 1, kindSockState: sockStateSize}[r.kind]
	if need == 0 {
		return fmt.Errorf("%w: kind %d", errRecord, r.kind)
	}
	if len(b) < need {
		return fmt.Errorf("%w: kind %d in %d bytes", errRecord, r.kind, len(b))
	}
	switch r.kind {
	case kindExec:
		r.ppid = int(le.Uint32(b[offExecPPID:]))
		n := int(le.Uint32(b[offExecArgsLen:]))
		full := le.Uint32(b[offExecArgsFull:])
		if n > argsLen || offExecArgs+n > len(b) {
			return fmt.Errorf("%w: argv length %d in %d bytes", errRecord, n, len(b))
		}
		r.argsTruncated = uint64(full) > uint64(n)
		r.args = splitArgs(b[offExecArgs : offExecArgs+n])
		r.filename = text(cstring(b[offExecFilename : offExecFilename+pathLen]))
		for i := range r.stdio {
			r.stdio[i] = stdio{mode: le.Uint16(b[offExecMode+2*i:]), rdev: le.Uint32(b[offExecRdev+4*i:])}
		}
	case kindFork:
		r.child = int(le.Uint32(b[offForkChild:]))
		r.childStart = le.Uint64(b[offForkChildStart:])
		if r.child <= 0 || r.child > 1<<22 {
			return fmt.Errorf("%w: child pid %d", errRecord, r.child)
		}
	case kindExit:
		r.exitStatus = int32(le.Uint32(b[offExitCode:]))
	case kindSyscall:
		r.sc = le.Uint32(b[offSysSC:])
		if r.sc == 0 || r.sc >= scMax {
			return fmt.Errorf("%w: system call %d", errRecord, r.sc)
		}
		r.flags = le.Uint32(b[offSysFlags:])
		r.ret = int64(le.Uint64(b[offSysRet:]))
		for i := range r.sargs {
			r.sargs[i] = le.Uint64(b[offSysArgs+8*i:])
		}
		r.family = le.Uint16(b[offSysFamily:])
		r.lport = binary.BigEndian.Uint16(b[offSysLPort:])
		r.rport = binary.BigEndian.Uint16(b[offSysRPort:])
		r.proto = le.Uint16(b[offSysProto:])
		copy(r.laddr[:], b[offSysLAddr:])
		copy(r.raddr[:], b[offSysRAddr:])
		r.aux = text(cstring(b[offSysAux : offSysAux+auxLen]))
		path := b[offSysPath:min(len(b), offSysPath+pathLen)]
		if r.sc == scConnect && r.family == afUnix {
			r.path = unixPath(path[:min(len(path), 108)])
		} else {
			r.path = text(cstring(path))
		}
		if len(b) >= sysSize {
			r.path2 = text(cstring(b[offSysPath2 : offSysPath2+pathLen]))
		}
	case kindSockState:
		r.oldState = int32(le.Uint32(b[offSockOld:]))
		r.newState = int32(le.Uint32(b[offSockNew:]))
		r.family = le.Uint16(b[offSockFamily:])
		// The tracepoint gives ports in host order.
		r.lport = le.Uint16(b[offSockSPort:])
		r.rport = le.Uint16(b[offSockDPort:])
		r.protocol = le.Uint16(b[offSockProto:])
		copy(r.laddr[:], b[offSockSAddr:])
		copy(r.raddr[:], b[offSockDAddr:])
	}
	return nil
}

// cstring is b up to its first NUL.
func cstring(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// text makes s valid UTF-8 (a process chooses its argv, comm and paths).
func text(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// unixPath is an AF_UNIX socket path; an abstract one (leading NUL) is
// written with a leading '@' as ss(8) does.
func unixPath(b []byte) string {
	if len(b) > 0 && b[0] == 0 {
		rest := cstring(b[1:])
		if rest == "" {
			return ""
		}
		return "@" + text(rest)
	}
	return text(cstring(b))
}

// splitArgs splits the NUL-separated argv area. A process that rewrote its
// argv (setproctitle) may leave one string with spaces: one argument.
func splitArgs(b []byte) []string {
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return nil
	}
	parts := bytes.Split(b, []byte{0})
	out := make([]string, len(parts))
	for i, p := range parts {
		out[i] = text(string(p))
	}
	return out
}

func isContainerID(s string) bool {
	if len(s) != cidLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
