// loadgen runs inside a test container (static, copied in with docker cp):
// it execs /bin/true or opens files for writing at a target rate for a
// duration and prints how many it made (benchmark), or makes the system
// calls of issue 14 that busybox has no applet for (live test), or makes
// named attempts an attacker probes a container with, each the bare system
// call, so that no tool name gives them away (end-to-end test, latency
// benchmark).
//
//	loadgen exec|open RATE SECONDS WORKERS
//	loadgen calls
//	loadgen attempt NAME... (see attempts)
package main

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) == 2 && os.Args[1] == "calls" {
		calls()
		return
	}
	if len(os.Args) > 2 && os.Args[1] == "attempt" {
		attempt(os.Args[2:])
		return
	}
	if len(os.Args) != 5 {
		fmt.Fprintln(os.Stderr, "usage: loadgen exec|open RATE SECONDS WORKERS")
		os.Exit(2)
	}
	mode := os.Args[1]
	rate, _ := strconv.Atoi(os.Args[2])
	secs, _ := strconv.Atoi(os.Args[3])
	workers, _ := strconv.Atoi(os.Args[4])
	interval := time.Duration(workers) * time.Second / time.Duration(rate)
	start := time.Now()
	end := start.Add(time.Duration(secs) * time.Second)
	var made atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			path := "/tmp/load" + strconv.Itoa(w)
			next := start.Add(time.Duration(w) * interval / time.Duration(workers))
			for i := 0; ; i++ {
				now := time.Now()
				if now.After(end) {
					return
				}
				if d := next.Sub(now); d > 0 {
					time.Sleep(d)
				}
				next = next.Add(interval)
				switch mode {
				case "exec":
					// ForkExec and Wait4 without os/exec's pipes and
					// goroutines: the exec itself is what is measured.
					pid, err := syscall.ForkExec("/bin/true", []string{"/bin/true", strconv.Itoa(w) + "-" + strconv.Itoa(i)}, &syscall.ProcAttr{})
					if err == nil {
						var ws syscall.WaitStatus
						if _, err := syscall.Wait4(pid, &ws, 0, nil); err == nil && ws.Exited() {
							made.Add(1)
						}
					}
				case "open":
					f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
					if err == nil {
						f.Close()
						made.Add(1)
					}
				}
			}
		}(w)
	}
	wg.Wait()
	fmt.Println(made.Load(), time.Since(start).Seconds())
}

// calls makes, in a container, the calls an attacker probes with: their
// results do not matter (most are refused), the sensor must report them.
func calls() {
	_ = syscall.PtraceAttach(1)
	local := make([]byte, 8)
	_, _ = unix.ProcessVMReadv(1, []unix.Iovec{{Base: &local[0], Len: 8}}, []unix.RemoteIovec{{Base: 0x400000, Len: 8}}, 0)
	_, _, _ = unix.Syscall(unix.SYS_BPF, 5 /* BPF_PROG_LOAD */, 0, 0)
	// A new user namespace (refused by Docker's seccomp profile); should it
	// be allowed, the child leaves at once.
	if r1, _, _ := unix.RawSyscall(unix.SYS_CLONE, unix.CLONE_NEWUSER|uintptr(unix.SIGCHLD), 0, 0); r1 == 0 {
		unix.RawSyscall(unix.SYS_EXIT_GROUP, 0, 0, 0)
	}
	fd, err := unix.MemfdCreate("whalewatch-fileless", 0)
	if err != nil {
		os.Exit(1)
	}
	exe, err := os.ReadFile("/bin/busybox")
	if err != nil {
		os.Exit(1)
	}
	_, _ = unix.Write(fd, exe)
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	_ = unix.Capget(&hdr, &data[0])
	_ = unix.Capset(&hdr, &data[0])
	// Fileless execution: the memfd's busybox runs "true" and exits 0.
	arg0, _ := unix.BytePtrFromString("true")
	argv := []*byte{arg0, nil}
	empty, _ := unix.BytePtrFromString("")
	_, _, e := unix.Syscall6(unix.SYS_EXECVEAT, uintptr(fd), uintptr(unsafe.Pointer(empty)),
		uintptr(unsafe.Pointer(&argv[0])), uintptr(unsafe.Pointer(&[]*byte{nil}[0])), unix.AT_EMPTY_PATH, 0)
	fmt.Println("execveat:", e)
	os.Exit(1)
}

// attempts are the probes of "loadgen attempt": each makes its call once and
// returns the call's error (most are refused, which is the point).
var attempts = map[string]func() error{
	"read-shadow":  func() error { return readFile("/etc/shadow") },
	"read-environ": func() error { return readFile("/proc/1/environ") },
	"link-shadow":  func() error { return syscall.Link("/etc/shadow", "/tmp/.sh-"+strconv.Itoa(os.Getpid())) },
	"symlink-shadow": func() error {
		return syscall.Symlink("/etc/shadow", "/tmp/.sl-"+strconv.Itoa(os.Getpid()))
	},
	// truncate(2) of a log and of a shell history (the caller put them
	// there), as an intruder erasing their tracks does.
	"truncate-log":     func() error { return syscall.Truncate("/var/log/app/access.log", 0) },
	"truncate-history": func() error { return syscall.Truncate("/root/.ash_history", 0) },
	"kill-init":        func() error { return syscall.Kill(1, syscall.SIGKILL) },
	"mount": func() error {
		return syscall.Mount("none", "/mnt", "tmpfs", 0, "")
	},
	"unshare": func() error { return syscall.Unshare(syscall.CLONE_NEWNS) },
	"ptrace":  func() error { return syscall.PtraceAttach(1) },
	// setuid(2) itself: Go's syscall.Setuid goes through every thread.
	"setuid": func() error {
		if _, _, e := syscall.RawSyscall(syscall.SYS_SETUID, 0, 0, 0); e != 0 {
			return e
		}
		return nil
	},
	"fileless": fileless,
}

func attempt(names []string) {
	for _, n := range names {
		f, ok := attempts[n]
		if !ok {
			fmt.Fprintln(os.Stderr, "unknown attempt", n)
			os.Exit(2)
		}
		fmt.Println(n+":", f())
	}
}

func readFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	return f.Close()
}

// fileless runs busybox's "true" from a memfd through execveat(AT_EMPTY_PATH)
// in a child, so that the caller goes on.
func fileless() error {
	fd, err := unix.MemfdCreate("x", 0)
	if err != nil {
		return err
	}
	exe, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return err
	}
	if _, err := unix.Write(fd, exe); err != nil {
		return err
	}
	arg0, _ := unix.BytePtrFromString("true")
	argv := []*byte{arg0, nil}
	envv := []*byte{nil}
	empty, _ := unix.BytePtrFromString("")
	pid, _, e := unix.RawSyscall(unix.SYS_CLONE, uintptr(unix.SIGCHLD), 0, 0)
	if e != 0 {
		return e
	}
	if pid == 0 {
		unix.RawSyscall6(unix.SYS_EXECVEAT, uintptr(fd), uintptr(unsafe.Pointer(empty)),
			uintptr(unsafe.Pointer(&argv[0])), uintptr(unsafe.Pointer(&envv[0])), unix.AT_EMPTY_PATH, 0)
		unix.RawSyscall(unix.SYS_EXIT_GROUP, 127, 0, 0)
	}
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(int(pid), &ws, 0, nil); err != nil {
		return err
	}
	if ws.ExitStatus() != 0 {
		return fmt.Errorf("fileless child exited %d", ws.ExitStatus())
	}
	return nil
}
