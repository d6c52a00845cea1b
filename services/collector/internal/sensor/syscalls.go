package sensor

import (
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// System calls as sensor.bpf.c numbers them (SC_*): stable numbers of the
// program, not the architecture's.
const (
	scOpenat uint32 = iota + 1
	scOpenat2
	scOpen
	scCreat
	scRename
	scRenameat
	scRenameat2
	scUnlink
	scUnlinkat
	scRmdir
	scChmod
	scFchmod
	scFchmodat
	scFchmodat2
	scLink
	scLinkat
	scSymlink
	scSymlinkat
	scTruncate
	scFtruncate
	scConnect
	scAccept
	scAccept4
	scMount
	scUmount2
	scUnshare
	scSetns
	scClone
	scClone3
	scInitModule
	scFinitModule
	scDeleteModule
	scPtrace
	scPVMReadv
	scPVMWritev
	scBPF
	scMemfdCreate
	scExecveat
	scChroot
	scPivotRoot
	scSetuid
	scSetgid
	scSetreuid
	scSetregid
	scSetresuid
	scSetresgid
	scSetfsuid
	scSetfsgid
	scCapset
	scKill
	scTkill
	scTgkill
	scMax
)

// syscallNames is indexed by sc*; the names are the calls' (tracepoint
// "umount" is umount2's).
var syscallNames = [...]string{
	"", "openat", "openat2", "open", "creat", "rename", "renameat", "renameat2",
	"unlink", "unlinkat", "rmdir", "chmod", "fchmod", "fchmodat", "fchmodat2",
	"link", "linkat", "symlink", "symlinkat", "truncate", "ftruncate",
	"connect", "accept", "accept4",
	"mount", "umount2", "unshare", "setns", "clone", "clone3",
	"init_module", "finit_module", "delete_module",
	"ptrace", "process_vm_readv", "process_vm_writev", "bpf", "memfd_create",
	"execveat", "chroot", "pivot_root",
	"setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid", "setfsgid", "capset",
	"kill", "tkill", "tgkill",
}

const afUnix, afInet, afInet6 = 1, 2, 10

const atFDCWD = -100

func isFileCall(sc uint32) bool { return sc >= scOpenat && sc <= scFtruncate }
func isNetCall(sc uint32) bool  { return sc >= scConnect && sc <= scAccept4 }

// errnoName is the symbolic name of a failed call's -errno.
func errnoName(ret int64) string {
	if ret >= 0 || ret < -4095 {
		return ""
	}
	if n := unix.ErrnoName(unix.Errno(-ret)); n != "" {
		return n
	}
	return "E" + strconv.FormatInt(-ret, 10)
}

type flagName struct {
	bit  uint64
	name string
}

func flagString(v uint64, names []flagName) string {
	var parts []string
	for _, f := range names {
		if v&f.bit == f.bit && f.bit != 0 {
			parts = append(parts, f.name)
			v &^= f.bit
		}
	}
	if v != 0 || len(parts) == 0 {
		parts = append(parts, "0x"+strconv.FormatUint(v, 16))
	}
	return strings.Join(parts, "|")
}

var openFlags = []flagName{
	{unix.O_WRONLY, "O_WRONLY"}, {unix.O_RDWR, "O_RDWR"}, {unix.O_CREAT, "O_CREAT"}, {unix.O_EXCL, "O_EXCL"},
	{unix.O_TRUNC, "O_TRUNC"}, {unix.O_APPEND, "O_APPEND"}, {unix.O_NOFOLLOW, "O_NOFOLLOW"},
	{unix.O_DIRECTORY, "O_DIRECTORY"}, {unix.O_TMPFILE &^ unix.O_DIRECTORY, "O_TMPFILE"}, {unix.O_CLOEXEC, "O_CLOEXEC"},
	{unix.O_NONBLOCK, "O_NONBLOCK"}, {unix.O_PATH, "O_PATH"},
}

func openFlagString(v uint64) string {
	if v&(unix.O_WRONLY|unix.O_RDWR) == 0 {
		if v == 0 {
			return "O_RDONLY"
		}
		return "O_RDONLY|" + flagString(v, openFlags)
	}
	return flagString(v, openFlags)
}

var nsFlags = []flagName{
	{unix.CLONE_NEWNS, "CLONE_NEWNS"}, {unix.CLONE_NEWUTS, "CLONE_NEWUTS"}, {unix.CLONE_NEWIPC, "CLONE_NEWIPC"},
	{unix.CLONE_NEWUSER, "CLONE_NEWUSER"}, {unix.CLONE_NEWPID, "CLONE_NEWPID"}, {unix.CLONE_NEWNET, "CLONE_NEWNET"},
	{unix.CLONE_NEWCGROUP, "CLONE_NEWCGROUP"}, {unix.CLONE_NEWTIME, "CLONE_NEWTIME"},
	{unix.CLONE_FILES, "CLONE_FILES"}, {unix.CLONE_FS, "CLONE_FS"}, {unix.CLONE_SYSVSEM, "CLONE_SYSVSEM"},
	{unix.CLONE_VM, "CLONE_VM"}, {unix.CLONE_THREAD, "CLONE_THREAD"}, {unix.CLONE_SIGHAND, "CLONE_SIGHAND"},
}

var mountFlags = []flagName{
	{unix.MS_RDONLY, "MS_RDONLY"}, {unix.MS_NOSUID, "MS_NOSUID"}, {unix.MS_NODEV, "MS_NODEV"},
	{unix.MS_NOEXEC, "MS_NOEXEC"}, {unix.MS_REMOUNT, "MS_REMOUNT"}, {unix.MS_BIND, "MS_BIND"},
	{unix.MS_MOVE, "MS_MOVE"}, {unix.MS_REC, "MS_REC"}, {unix.MS_PRIVATE, "MS_PRIVATE"},
	{unix.MS_SHARED, "MS_SHARED"}, {unix.MS_SLAVE, "MS_SLAVE"},
}

var ptraceRequests = map[uint64]string{
	unix.PTRACE_TRACEME: "PTRACE_TRACEME", unix.PTRACE_PEEKTEXT: "PTRACE_PEEKTEXT", unix.PTRACE_PEEKDATA: "PTRACE_PEEKDATA",
	unix.PTRACE_POKETEXT: "PTRACE_POKETEXT", unix.PTRACE_POKEDATA: "PTRACE_POKEDATA", unix.PTRACE_CONT: "PTRACE_CONT",
	unix.PTRACE_KILL: "PTRACE_KILL", unix.PTRACE_SINGLESTEP: "PTRACE_SINGLESTEP", unix.PTRACE_GETREGS: "PTRACE_GETREGS",
	unix.PTRACE_SETREGS: "PTRACE_SETREGS", unix.PTRACE_ATTACH: "PTRACE_ATTACH", unix.PTRACE_DETACH: "PTRACE_DETACH",
	unix.PTRACE_SYSCALL: "PTRACE_SYSCALL", unix.PTRACE_SETOPTIONS: "PTRACE_SETOPTIONS", unix.PTRACE_SEIZE: "PTRACE_SEIZE",
	unix.PTRACE_INTERRUPT: "PTRACE_INTERRUPT",
}

var bpfCommands = []string{
	"BPF_MAP_CREATE", "BPF_MAP_LOOKUP_ELEM", "BPF_MAP_UPDATE_ELEM", "BPF_MAP_DELETE_ELEM", "BPF_MAP_GET_NEXT_KEY",
	"BPF_PROG_LOAD", "BPF_OBJ_PIN", "BPF_OBJ_GET", "BPF_PROG_ATTACH", "BPF_PROG_DETACH", "BPF_PROG_TEST_RUN",
	"BPF_PROG_GET_NEXT_ID", "BPF_MAP_GET_NEXT_ID", "BPF_PROG_GET_FD_BY_ID", "BPF_MAP_GET_FD_BY_ID",
	"BPF_OBJ_GET_INFO_BY_FD", "BPF_PROG_QUERY", "BPF_RAW_TRACEPOINT_OPEN", "BPF_BTF_LOAD", "BPF_BTF_GET_FD_BY_ID",
	"BPF_TASK_FD_QUERY", "BPF_MAP_LOOKUP_AND_DELETE_ELEM", "BPF_MAP_FREEZE", "BPF_BTF_GET_NEXT_ID",
	"BPF_MAP_LOOKUP_BATCH", "BPF_MAP_LOOKUP_AND_DELETE_BATCH", "BPF_MAP_UPDATE_BATCH", "BPF_MAP_DELETE_BATCH",
	"BPF_LINK_CREATE", "BPF_LINK_UPDATE", "BPF_LINK_GET_FD_BY_ID", "BPF_LINK_GET_NEXT_ID", "BPF_ENABLE_STATS",
	"BPF_ITER_CREATE", "BPF_LINK_DETACH", "BPF_PROG_BIND_MAP",
}

func hexArg(v uint64) string { return "0x" + strconv.FormatUint(v, 16) }
func dec(v uint64) string    { return strconv.FormatInt(int64(v), 10) }
func i32(v uint64) string    { return strconv.FormatInt(int64(int32(v)), 10) }

func fdArg(v uint64) string {
	if int32(v) == atFDCWD {
		return "AT_FDCWD"
	}
	return i32(v)
}

func signalName(v uint64) string {
	if v == 0 {
		return "0"
	}
	if n := unix.SignalName(unix.Signal(int(v))); n != "" {
		return n
	}
	return dec(v)
}

// syscallArgs are the decoded arguments of r worth reading, in the call's
// order (paths as the process gave them).
func syscallArgs(r *record) []string {
	a := r.sargs
	switch r.sc {
	case scOpenat, scOpenat2:
		return []string{fdArg(a[0]), r.path, openFlagString(a[2]), mode(a[3])}
	case scOpen, scCreat:
		return []string{r.path, openFlagString(a[1]), mode(a[2])}
	case scRename, scLink, scSymlink:
		return []string{r.path2, r.path}
	case scRenameat, scRenameat2, scLinkat:
		return []string{fdArg(a[0]), r.path2, fdArg(a[2]), r.path}
	case scSymlinkat:
		return []string{r.path2, fdArg(a[1]), r.path}
	case scUnlink, scRmdir, scChroot:
		return []string{r.path}
	case scUnlinkat:
		return []string{fdArg(a[0]), r.path, hexArg(a[2])}
	case scChmod:
		return []string{r.path, mode(a[1])}
	case scFchmod:
		return []string{i32(a[0]), mode(a[1])}
	case scFchmodat, scFchmodat2:
		return []string{fdArg(a[0]), r.path, mode(a[2])}
	case scTruncate:
		return []string{r.path, dec(a[1])}
	case scFtruncate:
		return []string{i32(a[0]), dec(a[1])}
	case scConnect, scAccept, scAccept4:
		return []string{i32(a[0])}
	case scMount:
		return []string{r.path2, r.path, r.aux, flagString(a[3], mountFlags)}
	case scUmount2:
		return []string{r.path, hexArg(a[1])}
	case scUnshare, scClone, scClone3:
		return []string{flagString(a[0], nsFlags)}
	case scSetns:
		return []string{i32(a[0]), flagString(a[1], nsFlags)}
	case scInitModule:
		return []string{dec(a[1]), r.aux}
	case scFinitModule:
		return []string{i32(a[0]), r.aux, hexArg(a[2])}
	case scDeleteModule:
		return []string{r.aux, hexArg(a[1])}
	case scPtrace:
		req, ok := ptraceRequests[a[0]]
		if !ok {
			req = dec(a[0])
		}
		return []string{req, i32(a[1])}
	case scPVMReadv, scPVMWritev:
		return []string{i32(a[0])}
	case scBPF:
		if a[0] < uint64(len(bpfCommands)) {
			return []string{bpfCommands[a[0]]}
		}
		return []string{dec(a[0])}
	case scMemfdCreate:
		return []string{r.aux, hexArg(a[1])}
	case scExecveat:
		return []string{fdArg(a[0]), r.path, "AT_EMPTY_PATH"}
	case scPivotRoot:
		return []string{r.path, r.path2}
	case scSetuid, scSetgid, scSetfsuid, scSetfsgid:
		return []string{i32(a[0])}
	case scSetreuid, scSetregid:
		return []string{i32(a[0]), i32(a[1])}
	case scSetresuid, scSetresgid:
		return []string{i32(a[0]), i32(a[1]), i32(a[2])}
	case scCapset:
		return []string{"effective=" + hexArg(a[2]), "permitted=" + hexArg(a[3]), "inheritable=" + hexArg(a[4])}
	case scKill, scTkill:
		return []string{i32(a[0]), signalName(a[1])}
	case scTgkill:
		return []string{i32(a[0]), i32(a[1]), signalName(a[2])}
	}
	return nil
}

func mode(v uint64) string { return "0" + strconv.FormatUint(v&0o7777, 8) }
