package procconn

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/services/collector/internal/proc"
	"github.com/whalewatch/whalewatch/services/collector/internal/source"
)

func readHex(t testing.TB, name string) []byte {
	t.Helper()
	s, err := os.ReadFile(filepath.Join("testdata", "procconn", name))
	require.NoError(t, err)
	b, err := hex.DecodeString(strings.TrimSpace(string(s)))
	require.NoError(t, err)
	return b
}

func parseAll(b []byte) ([]procEvent, error) {
	var evs []procEvent
	err := parseProcMessages(b, func(ev procEvent) { evs = append(evs, ev) })
	return evs, err
}

// Datagrams recorded from the kernel (6.18, x86_64): the acknowledgement of
// a subscription and a fork, exec and exit.
func TestParseProcMessagesRecorded(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		file string
		want procEvent
	}{
		{"ack.hex", procEvent{What: procEventNone, CPU: 1, Ack: 1, Timestamp: 2663993580361}},
		{"fork.hex", procEvent{What: procEventFork, Timestamp: 2663993809803, ParentPID: 9478, ParentTGID: 9475, PID: 9479, TGID: 9479}},
		{"exec.hex", procEvent{What: procEventExec, CPU: 1, Seq: 2, Timestamp: 2663994623488, PID: 9480, TGID: 9480}},
		{"exit.hex", procEvent{What: procEventExit, Seq: 1, Timestamp: 2663993858723, PID: 9479, TGID: 9479}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			t.Parallel()
			evs, err := parseAll(readHex(t, tc.file))
			require.NoError(t, err)
			require.Equal(t, []procEvent{tc.want}, evs)
		})
	}
}

func TestParseProcMessagesMalformed(t *testing.T) {
	t.Parallel()
	fork, exec := readHex(t, "fork.hex"), readHex(t, "exec.hex")

	evs, err := parseAll(append(append([]byte{}, fork...), exec...))
	require.NoError(t, err, "two messages in one datagram")
	require.Len(t, evs, 2)

	evs, err = parseAll(append(append([]byte{}, fork...), exec[:30]...))
	require.Error(t, err, "a truncated second message")
	require.Len(t, evs, 1, "the events before it are delivered")

	other := append([]byte{}, exec...)
	binary.NativeEndian.PutUint32(other[16:], 7) // another connector's index
	evs, err = parseAll(other)
	require.NoError(t, err)
	require.Empty(t, evs)

	short := append([]byte{}, fork...)
	binary.NativeEndian.PutUint16(short[32:], 20) // data length cuts the fork's pids
	_, err = parseAll(short)
	require.Error(t, err)

	for _, b := range [][]byte{nil, {1, 2, 3}, fork[:16], fork[:40]} {
		_, _ = parseAll(b) // never panics
	}
	long := append([]byte{}, fork...)
	binary.NativeEndian.PutUint32(long[0:], 1000) // length beyond the datagram
	_, err = parseAll(long)
	require.Error(t, err)
}

func FuzzParseProcMessages(f *testing.F) {
	for _, n := range []string{"ack.hex", "fork.hex", "exec.hex", "exit.hex"} {
		f.Add(readHex(f, n))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n := 0
		_ = parseProcMessages(b, func(procEvent) { n++ })
		require.LessOrEqual(t, n*(nlmsgHdrLen+cnMsgLen+procEventHdr), len(b))
	})
}

func TestProcListenMessage(t *testing.T) {
	t.Parallel()
	b := procListenMessage(77, procCnMcastListen)
	ne := binary.NativeEndian
	require.Len(t, b, 40)
	require.Equal(t, uint32(40), ne.Uint32(b[0:]))
	require.Equal(t, uint16(nlmsgDone), ne.Uint16(b[4:]))
	require.Equal(t, uint32(cnIdxProc), ne.Uint32(b[16:]))
	require.Equal(t, uint32(cnValProc), ne.Uint32(b[20:]))
	require.Equal(t, uint16(4), ne.Uint16(b[32:]))
	require.Equal(t, uint32(procCnMcastListen), ne.Uint32(b[36:]))
}

// procMsg builds one process connector datagram.
func procMsg(what uint32, cpu, seq uint32, ts uint64, words ...uint32) []byte {
	ne := binary.NativeEndian
	b := make([]byte, nlmsgHdrLen+cnMsgLen+procEventHdr+24)
	ne.PutUint32(b[0:], uint32(len(b)))
	ne.PutUint16(b[4:], nlmsgDone)
	c := b[nlmsgHdrLen:]
	ne.PutUint32(c[0:], cnIdxProc)
	ne.PutUint32(c[4:], cnValProc)
	ne.PutUint32(c[8:], seq)
	ne.PutUint16(c[16:], procEventHdr+24)
	d := c[cnMsgLen:]
	ne.PutUint32(d[0:], what)
	ne.PutUint32(d[4:], cpu)
	ne.PutUint64(d[8:], ts)
	for i, w := range words {
		ne.PutUint32(d[procEventHdr+4*i:], w)
	}
	return b
}

// fakeProcSocket delivers scripted datagrams, then blocks until closed.
type fakeProcSocket struct {
	msgs   chan []byte
	closed chan struct{}
	once   sync.Once
}

func newFakeProcSocket(n int) *fakeProcSocket {
	return &fakeProcSocket{msgs: make(chan []byte, n), closed: make(chan struct{})}
}

func (f *fakeProcSocket) Receive(buf []byte) (int, error) {
	select {
	case m := <-f.msgs:
		if m == nil {
			return 0, errProcOverrun
		}
		return copy(buf, m), nil
	case <-f.closed:
		return 0, os.ErrClosed
	case <-time.After(10 * time.Millisecond):
		return 0, errProcTimeout
	}
}

func (f *fakeProcSocket) Close() error {
	f.once.Do(func() { close(f.closed) })
	return nil
}

const (
	ctrA = "a2c5b6c27445b4f31c001ae8ef39a5ea0241fe23c84edce66c352ac77bc6150f"
	ctrB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

// writeProc writes /proc/<pid> of a fake process in container ctr ("" host).
func writeProc(t *testing.T, root string, pid, ppid int, ctr string, args ...string) {
	t.Helper()
	dir := filepath.Join(root, strconv.Itoa(pid))
	require.NoError(t, os.MkdirAll(dir, 0o755))
	cg := "0::/\n"
	if ctr != "" {
		cg = "0::/docker/" + ctr + "\n"
	}
	files := map[string]string{
		"cgroup":  cg,
		"cmdline": strings.Join(args, "\x00") + "\x00",
		"stat":    strconv.Itoa(pid) + " (" + filepath.Base(args[0]) + ") S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5000 0 0",
		"status":  "Name:\tx\nPPid:\t" + strconv.Itoa(ppid) + "\nUid:\t1000\t1000\t1000\t1000\n",
	}
	for n, c := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, n), []byte(c), 0o644))
	}
	require.NoError(t, os.Symlink(args[0], filepath.Join(dir, "exe")))
	require.NoError(t, os.Symlink("/work", filepath.Join(dir, "cwd")))
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "fd"), 0o755))
	for fd, target := range []string{"socket:[4242]", "pipe:[7]", "/dev/pts/0"} {
		require.NoError(t, os.Symlink(target, filepath.Join(dir, "fd", strconv.Itoa(fd))))
	}
}

type procHarness struct {
	pc   *Source
	sock *fakeProcSocket
	mu   sync.Mutex
	got  []*event.Event
	done chan error
	stop context.CancelFunc
}

func startProcConnector(t *testing.T, root string, cache map[string]*source.Container) *procHarness {
	t.Helper()
	require.NoError(t, os.WriteFile(filepath.Join(root, "stat"), []byte("cpu 1\nbtime 1700000000\n"), 0o644))
	h := &procHarness{sock: newFakeProcSocket(100), done: make(chan error, 1)}
	var cacheMu sync.Mutex
	h.pc = &Source{
		host:   "h",
		open:   func() (procSocket, error) { return h.sock, nil },
		reader: proc.NewReader(root),
		lookup: lookupFunc(func(id string) (*source.Container, bool) {
			cacheMu.Lock()
			defer cacheMu.Unlock()
			c, ok := cache[id]
			return c, ok
		}),
		log:  slog.New(slog.NewTextHandler(io.Discard, nil)),
		m:    newProcMetrics(prometheus.NewRegistry()),
		now:  time.Now,
		mono: func() uint64 { return 10e9 },
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.stop = cancel
	go func() {
		h.done <- h.pc.Run(ctx, func(e *event.Event) {
			e.Bound() // as the queue does
			require.NoError(t, e.Validate())
			h.mu.Lock()
			h.got = append(h.got, e)
			h.mu.Unlock()
		})
	}()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-h.done)
	})
	return h
}

func (h *procHarness) events() []*event.Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]*event.Event(nil), h.got...)
}

func (h *procHarness) attribution(result string) float64 {
	return testutil.ToFloat64(h.pc.m.attribution.WithLabelValues(result))
}

func TestProcConnectorAttributesExecs(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	cache := map[string]*source.Container{ctrA: {ID: ctrA, Name: "web", Image: event.Image{Name: "nginx"}}}
	writeProc(t, root, 100, 99, ctrA, "/bin/sh", "-c", "loop")
	writeProc(t, root, 101, 100, ctrA, "/bin/wget", "http://x/\n\xff")
	writeProc(t, root, 200, 1, "", "/usr/bin/host-thing")
	h := startProcConnector(t, root, cache)

	const ms = uint64(time.Millisecond)
	seq := uint32(0)
	send := func(what uint32, ts uint64, words ...uint32) {
		seq++
		h.sock.msgs <- procMsg(what, 0, seq, ts, words...)
	}
	send(procEventFork, 9000*ms, 99, 99, 100, 100)   // sh forked by an unknown parent
	send(procEventExec, 9001*ms, 100, 100)           // sh: full
	send(procEventFork, 9002*ms, 100, 100, 101, 101) // wget forked by sh
	send(procEventExec, 9003*ms, 101, 101)           // wget: full
	send(procEventFork, 9004*ms, 100, 100, 102, 102) // a process that is gone before it is read
	send(procEventExec, 9005*ms, 102, 102)           // partial: container known from the fork
	send(procEventExit, 9006*ms, 102, 102, 0, 0)     //
	send(procEventExec, 9007*ms, 200, 200)           // a host process: dropped
	send(procEventExec, 9008*ms, 300, 300)           // gone, never seen: none
	send(procEventFork, 9009*ms, 100, 100, 100, 103) // a thread: ignored
	seq += 4                                         // four events lost
	send(procEventExit, 9010*ms, 999, 999, 0, 0)     //
	h.sock.msgs <- nil                               // an overrun

	waitEvents := func(n int) []*event.Event {
		var evs []*event.Event
		require.Eventually(t, func() bool { evs = h.events(); return len(evs) >= n }, 5*time.Second, 5*time.Millisecond)
		return evs
	}
	evs := waitEvents(3)
	require.Eventually(t, func() bool { return testutil.ToFloat64(h.pc.m.overruns) == 1 }, 5*time.Second, time.Millisecond)
	require.Len(t, evs, 3)
	require.Equal(t, 2.0, h.attribution("full"))
	require.Equal(t, 1.0, h.attribution("partial"))
	require.Equal(t, 1.0, h.attribution("none"))
	require.Equal(t, 4.0, testutil.ToFloat64(h.pc.m.lost))

	sh, wget, gone := evs[0], evs[1], evs[2]
	require.Equal(t, source.ModeProcConnector, sh.Whalewatch.Source)
	require.Equal(t, event.TelemetryProcess, sh.Whalewatch.Telemetry)
	require.Equal(t, "web", sh.Container.Name)
	require.Equal(t, "/bin/sh -c loop", sh.Process.CommandLine)
	require.Equal(t, "sh", sh.Process.Name)

	p := wget.Process
	require.Equal(t, ctrA, wget.Container.ID)
	require.Equal(t, "nginx", wget.Container.Image.Name)
	require.Equal(t, 101, p.PID)
	require.Equal(t, "/bin/wget", p.Executable)
	require.Equal(t, []string{"/bin/wget", "http://x/\n\uFFFD"}, p.Args, "bounded: valid UTF-8")
	require.Equal(t, 2, p.ArgsCount)
	require.Equal(t, "/work", p.WorkingDirectory)
	require.Equal(t, &event.User{ID: "1000"}, p.User)
	require.Equal(t, &event.Parent{PID: 100, Name: "sh", Executable: "/bin/sh"}, p.Parent)
	require.Equal(t, []event.Ancestor{
		{PID: 100, Name: "sh", Executable: "/bin/sh", CommandLine: "/bin/sh -c loop"},
		{PID: 99}, // forked sh before the collector listened: known to be in the container, nothing more
	}, wget.Whalewatch.Ancestry)
	require.Equal(t, &event.Stdio{Stdin: "socket", Stdout: "pipe", Stderr: "tty"}, wget.Whalewatch.Stdio)
	require.Equal(t, []string{"start"}, wget.Event.Type)
	require.Equal(t, "exec", wget.Event.Action)
	// Kernel timestamps map to wall time through CLOCK_MONOTONIC's offset.
	require.WithinDuration(t, wget.Event.Created.Add(-997*time.Millisecond), wget.Timestamp, 200*time.Millisecond)
	require.Equal(t, time.Millisecond, wget.Timestamp.Sub(p.Start), "start is the fork")

	require.Equal(t, ctrA, gone.Container.ID)
	require.Equal(t, 102, gone.Process.PID)
	require.Empty(t, gone.Process.CommandLine)
	require.Equal(t, &event.Parent{PID: 100, Name: "sh", Executable: "/bin/sh"}, gone.Process.Parent, "the parent from the fork")

	ids := map[string]bool{}
	for _, e := range evs {
		ids[e.Event.ID] = true
	}
	require.Len(t, ids, 3)
}

func TestProcConnectorWaitsForTheContainerInTheCache(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	writeProc(t, root, 500, 1, ctrB, "/bin/sleep", "1")
	cache := map[string]*source.Container{}
	h := startProcConnector(t, root, cache)
	h.sock.msgs <- procMsg(procEventExec, 0, 1, 1, 500, 500)
	require.Eventually(t, func() bool { return h.attribution("full") == 1 }, 5*time.Second, time.Millisecond)
	require.Empty(t, h.events(), "held until the container is known")
	// The container is unknown to the engine for good: published after
	// enrichWait with its id alone.
	require.Eventually(t, func() bool { return len(h.events()) == 1 }, 2*enrichWait, 10*time.Millisecond)
	e := h.events()[0]
	require.Equal(t, &event.Container{ID: ctrB}, e.Container)
}

// docker exec: runc forks on the host, then its child joins the container's
// cgroup before it execs the command. A host classification is checked again
// at every exec.
func TestProcConnectorProcessJoiningAContainer(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	writeProc(t, root, 700, 1, "", "/usr/bin/runc", "exec")
	writeProc(t, root, 701, 700, "", "/usr/bin/runc", "init")
	writeProc(t, root, 800, 1, ctrA, "/bin/marker")
	cache := map[string]*source.Container{ctrA: {ID: ctrA, Name: "web"}}
	h := startProcConnector(t, root, cache)
	h.sock.msgs <- procMsg(procEventFork, 0, 1, 1, 700, 700, 701, 701) // on the host
	h.sock.msgs <- procMsg(procEventExec, 0, 2, 2, 800, 800)           // events are handled in order:
	require.Eventually(t, func() bool { return len(h.events()) == 1 }, 5*time.Second, time.Millisecond)

	// 701 joins the container, then execs.
	require.NoError(t, os.WriteFile(filepath.Join(root, "701", "cgroup"), []byte("0::/docker/"+ctrA+"\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(root, "701", "cmdline"), []byte("/bin/sh\x00-c\x00id\x00"), 0o644))
	h.sock.msgs <- procMsg(procEventExec, 0, 3, 3, 701, 701)
	h.sock.msgs <- procMsg(procEventFork, 0, 4, 4, 700, 700, 702, 702) // a host child, gone at once
	h.sock.msgs <- procMsg(procEventExec, 0, 5, 5, 702, 702)
	h.sock.msgs <- procMsg(procEventExec, 0, 6, 6, 800, 800)
	require.Eventually(t, func() bool { return len(h.events()) == 3 }, 5*time.Second, time.Millisecond)
	e := h.events()[1]
	require.Equal(t, "web", e.Container.Name)
	require.Equal(t, "/bin/sh -c id", e.Process.CommandLine)
	require.Equal(t, 3.0, h.attribution("full"))
	require.Equal(t, 0.0, h.attribution("none"), "a host process known from its fork is not counted")
}

type brokenProcSocket struct{}

func (brokenProcSocket) Receive([]byte) (int, error) { return 0, errors.New("socket broke") }
func (brokenProcSocket) Close() error                { return nil }

func TestProcConnectorStopsOnSocketError(t *testing.T) {
	t.Parallel()
	pc := &Source{
		open:   func() (procSocket, error) { return brokenProcSocket{}, nil },
		reader: proc.NewReader(t.TempDir()),
		lookup: lookupFunc(func(string) (*source.Container, bool) { return nil, false }),
		log:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		m:      newProcMetrics(prometheus.NewRegistry()),
		now:    time.Now,
		mono:   func() uint64 { return 1 },
	}
	require.ErrorContains(t, pc.Run(t.Context(), func(*event.Event) {}), "socket broke")
}

type lookupFunc func(string) (*source.Container, bool)

func (f lookupFunc) Lookup(id string) (*source.Container, bool) { return f(id) }
