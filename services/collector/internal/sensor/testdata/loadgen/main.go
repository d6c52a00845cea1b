// loadgen runs inside a test container (static, copied in with docker cp):
// it execs /bin/true or opens files for writing at a target rate for a
// duration and prints how many it made (benchmark), or makes the system
// calls of issue 14 that busybox has no applet for (live test), or makes
// named attempts an attacker probes a container with, each the bare system
// call, so that no tool name gives them away (end-to-end test, latency
// benchmark).
//
//	loadgen exec|open RATE SECONDS WORKERS
//	loadgen tinytrue (writes the smallest program that exits 0; prints its path, for execgen)
//	loadgen calls
//	loadgen attempt NAME... (see attempts)
//	loadgen repeat COUNT INTERVAL_MS NAME... (the attempts COUNT times, INTERVAL_MS apart)
package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) == 2 && os.Args[1] == "tinytrue" {
		fmt.Println(tinyTrue())
		return
	}
	if len(os.Args) == 2 && os.Args[1] == "calls" {
		calls()
		return
	}
	if len(os.Args) > 2 && os.Args[1] == "attempt" {
		for _, n := range os.Args[2:] {
			fmt.Println(n+":", attempt(n))
		}
		return
	}
	if len(os.Args) > 4 && os.Args[1] == "repeat" {
		count, _ := strconv.Atoi(os.Args[2])
		ms, _ := strconv.Atoi(os.Args[3])
		for i := 0; i < count; i++ {
			for _, n := range os.Args[4:] {
				_ = attempt(n)
			}
			time.Sleep(time.Duration(ms) * time.Millisecond)
		}
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
	exe := "/bin/true"
	if mode == "exec" {
		exe = tinyTrue()
	}
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
					// argv[0] stays /bin/true whatever runs: it is what the
					// benchmark counts.
					pid, err := syscall.ForkExec(exe, []string{"/bin/true", strconv.Itoa(w) + "-" + strconv.Itoa(i)}, &syscall.ProcAttr{})
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

func attempt(name string) error {
	f, ok := attempts[name]
	if !ok {
		fmt.Fprintln(os.Stderr, "unknown attempt", name)
		os.Exit(2)
	}
	return f()
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

// tinyTrue writes a 129-byte static x86-64 program that only calls
// exit_group(0) and returns its path; busybox's true costs the exec of a
// 2 MB binary and its start-up, which capped the exec phase far below its
// target on 2 cores. Elsewhere it returns /bin/true.
func tinyTrue() string {
	if runtime.GOARCH != "amd64" {
		return "/bin/true"
	}
	const base, codeOff = 0x400000, 64 + 56
	code := []byte{0xb8, 0xe7, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05} // mov eax,231; xor edi,edi; syscall
	b := make([]byte, codeOff, codeOff+len(code))
	copy(b, "\x7fELF\x02\x01\x01") // 64-bit, little endian, ELF version 1
	le := binary.LittleEndian
	le.PutUint16(b[16:], 2)    // ET_EXEC
	le.PutUint16(b[18:], 0x3e) // EM_X86_64
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[24:], base+codeOff) // entry
	le.PutUint64(b[32:], 64)           // program headers follow the header
	le.PutUint16(b[52:], 64)
	le.PutUint16(b[54:], 56)
	le.PutUint16(b[56:], 1)
	ph := b[64:]
	le.PutUint32(ph[0:], 1) // PT_LOAD
	le.PutUint32(ph[4:], 5) // R+X
	le.PutUint64(ph[16:], base)
	le.PutUint64(ph[24:], base)
	le.PutUint64(ph[32:], uint64(codeOff+len(code)))
	le.PutUint64(ph[40:], uint64(codeOff+len(code)))
	le.PutUint64(ph[48:], 0x1000)
	b = append(b, code...)
	path := "/tmp/true"
	if err := os.WriteFile(path, b, 0o755); err != nil {
		return "/bin/true"
	}
	return path
}
