// loadgen runs inside a test container (static, copied in with docker cp):
// it execs /bin/true or opens files for writing at a target rate for a
// duration and prints how many it made (benchmark), or makes the system
// calls of issue 14 that busybox has no applet for (live test).
//
//	loadgen exec|open RATE SECONDS WORKERS
//	loadgen calls
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
