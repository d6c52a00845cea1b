package procconn

import (
	"errors"
	"fmt"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// netlinkProcSocket is a NETLINK_CONNECTOR socket subscribed to the process
// connector's multicast group. It is blocking, with a receive timeout so
// that its reader notices the end of its context: it is read from one locked
// OS thread (see raiseReceivePriority), not through the Go runtime's poller.
type netlinkProcSocket struct {
	fd int
}

// recvTimeout bounds one Receive, hence how long shutdown waits for the reader.
const recvTimeout = 200 * time.Millisecond

// openProcConnector opens the socket, subscribes, and waits for the kernel's
// acknowledgement of the subscription. It fails without root (CAP_NET_ADMIN:
// binding to the group is refused) and outside the host's PID and user
// namespaces (the kernel ignores the subscription: no acknowledgement).
func openProcConnector() (procSocket, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_CONNECTOR)
	if err != nil {
		return nil, fmt.Errorf("netlink connector socket: %w", err)
	}
	// A burst of execs must not overflow the buffer: force a large one
	// (needs CAP_NET_ADMIN), else take what the host allows.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, procSockRcvBuf); err != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, procSockRcvBuf)
	}
	tv := unix.NsecToTimeval(recvTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink connector receive timeout: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: cnIdxProc}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("binding to the process connector group: %w", err)
	}
	s := &netlinkProcSocket{fd: fd}
	if err := s.subscribe(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return s, nil
}

func (s *netlinkProcSocket) send(msg []byte) error {
	return unix.Sendto(s.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
}

// subscribe sends PROC_CN_MCAST_LISTEN and waits up to 2 s for its
// acknowledgement, an event of type none. (The kernel does not echo the
// request's sequence number, so another listener's acknowledgement in the
// same 2 s would pass too. Outside the host's PID or user namespace the
// kernel ignores the request silently: no acknowledgement.)
func (s *netlinkProcSocket) subscribe() error {
	if err := s.send(procListenMessage(1, procCnMcastListen)); err != nil {
		return fmt.Errorf("subscribing to process events: %w", err)
	}
	deadline := time.Now().Add(2 * time.Second)
	buf := make([]byte, 64<<10)
	for time.Now().Before(deadline) {
		n, err := s.Receive(buf)
		if errors.Is(err, errProcOverrun) || errors.Is(err, errProcTimeout) {
			continue
		}
		if err != nil {
			return fmt.Errorf("reading the process events subscription's acknowledgement: %w", err)
		}
		var ack *procEvent
		_ = parseProcMessages(buf[:n], func(ev procEvent) {
			if ev.What == procEventNone {
				ack = &ev
			}
		})
		if ack == nil {
			continue
		}
		if ack.Err != 0 {
			return fmt.Errorf("process events subscription refused: %w", syscall.Errno(ack.Err))
		}
		return nil
	}
	return errors.New("no acknowledgement of the process events subscription (not in the host's PID namespace?)")
}

func (s *netlinkProcSocket) Receive(buf []byte) (int, error) {
	for {
		n, _, err := unix.Recvfrom(s.fd, buf, 0)
		switch err {
		case nil:
			return n, nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return 0, errProcTimeout
		case unix.ENOBUFS:
			return 0, errProcOverrun
		default:
			return 0, err
		}
	}
}

// Close unsubscribes and closes the socket. No Receive may be running.
func (s *netlinkProcSocket) Close() error {
	_ = s.send(procListenMessage(0, procCnMcastIgnore))
	return unix.Close(s.fd)
}

// monotonicNow is CLOCK_MONOTONIC, the clock of the connector's timestamps.
func monotonicNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// raiseReceivePriority locks the calling goroutine to its OS thread for good
// (the thread ends with the goroutine: it never returns to the runtime's
// pool with a changed priority) and raises that thread's scheduling
// priority: SCHED_FIFO 1, else nice -20. The race with a short-lived
// process's exit is won by being scheduled first when its exec event
// arrives; on a loaded host a normal-priority reader loses about one
// process in four that lives under a millisecond, SCHED_FIFO about one in
// three hundred (bench/exec-capture). The thread only blocks in recvfrom
// and reads a few /proc files per exec; the kernel's real-time throttling
// (sched_rt_runtime_us) caps it in an exec flood. It returns the policy it
// got: "fifo", "nice" or "normal".
//
// The thread also needs a P to run Go code when recvfrom returns. While it
// blocks, the runtime hands its P to other goroutines, whose normal-priority
// threads a loaded host may starve: the reader would wait for them. So
// GOMAXPROCS is raised by one while the reader runs (restore undoes it),
// leaving a P idle for it most of the time.
func raiseReceivePriority() (policy string, restore func()) {
	runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + 1)
	restore = func() { runtime.GOMAXPROCS(max(1, runtime.GOMAXPROCS(0)-1)) }
	runtime.LockOSThread()
	attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: 1 /* SCHED_FIFO */, Priority: 1}
	if err := unix.SchedSetAttr(0, &attr, 0); err == nil {
		return "fifo", restore
	}
	if err := unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), -20); err == nil {
		return "nice", restore
	}
	return "normal", restore
}
