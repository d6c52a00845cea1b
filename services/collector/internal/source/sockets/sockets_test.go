package sockets

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/services/collector/internal/procnet"
	"github.com/whalewatch/whalewatch/services/collector/internal/source"
	"github.com/whalewatch/whalewatch/services/collector/internal/source/sourcetest"
)

func newTestSocketMonitor(proc string) *Monitor {
	return New(Config{Interval: 10 * time.Millisecond}, source.HostMounts{Proc: proc}, "h", sourcetest.Log(), prometheus.NewRegistry())
}

func sock(tr procnet.Transport, local, remote string, st procnet.State, inode uint64) procnet.Socket {
	return procnet.Socket{Transport: tr, Local: netip.MustParseAddrPort(local), Remote: netip.MustParseAddrPort(remote), State: st, Inode: inode}
}

// sockSeen is what a test compares of a network event.
type sockSeen struct {
	state, transport, direction, src, dst string
}

func sockEvents(t *testing.T, es []*event.Event) []sockSeen {
	t.Helper()
	var out []sockSeen
	for _, e := range es {
		e.Container = &event.Container{ID: "c1"}
		require.NoError(t, e.Validate())
		s := sockSeen{e.Whalewatch.Socket.State, e.Network.Transport, e.Network.Direction,
			netip.AddrPortFrom(netip.MustParseAddr(e.Source.IP), uint16(e.Source.Port)).String(), ""}
		if e.Destination != nil {
			s.dst = netip.AddrPortFrom(netip.MustParseAddr(e.Destination.IP), uint16(e.Destination.Port)).String()
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].state+out[i].src+out[i].dst < out[j].state+out[j].src+out[j].dst })
	return out
}

func TestSocketMonitorPublishesChanges(t *testing.T) {
	t.Parallel()
	s := newTestSocketMonitor("")
	listen := sock(procnet.TCP, "0.0.0.0:4444", "0.0.0.0:0", procnet.Listen, 1)
	dns := sock(procnet.UDP, "[::]:53", "[::]:0", procnet.Close, 2)
	var got sourcetest.Recorder
	seen, lp := s.look("c1", []procnet.Socket{listen, dns,
		sock(procnet.TCP, "127.0.0.1:5000", "127.0.0.1:80", procnet.TimeWait, 0)}, nil, nil, got.Emit)
	require.Equal(t, []sockSeen{
		{"listen", "tcp", "ingress", "0.0.0.0:4444", ""},
		{"listen", "udp", "ingress", "[::]:53", ""},
	}, sockEvents(t, got.All()), "TIME_WAIT is not published")

	// A client connects to the listener over loopback, which then closes; an
	// outbound connection is attempted and established.
	got = sourcetest.Recorder{}
	client := sock(procnet.TCP, "127.0.0.1:40000", "127.0.0.1:4444", procnet.Established, 3)
	server := sock(procnet.TCP, "127.0.0.1:4444", "127.0.0.1:40000", procnet.Established, 4)
	out := sock(procnet.TCP, "[::ffff:10.0.0.2]:40001", "[::ffff:10.0.0.9]:443", procnet.SynSent, 5)
	seen, lp = s.look("c1", []procnet.Socket{dns, client, server, out}, seen, lp, got.Emit)
	require.Equal(t, []sockSeen{
		{"closed", "tcp", "ingress", "0.0.0.0:4444", ""},
		{"established", "tcp", "egress", "127.0.0.1:40000", "127.0.0.1:4444"},
		{"established", "tcp", "ingress", "127.0.0.1:4444", "127.0.0.1:40000"},
		{"syn_sent", "tcp", "egress", "10.0.0.2:40001", "10.0.0.9:443"},
	}, sockEvents(t, got.All()))
	for _, e := range got.All() {
		if e.Whalewatch.Socket.State == "syn_sent" {
			require.Equal(t, "ipv4", e.Network.Type, "v4-mapped addresses are reported as IPv4")
			require.Equal(t, []string{"connection", "start"}, e.Event.Type)
		}
	}

	got = sourcetest.Recorder{}
	out.State = procnet.Established
	seen, lp = s.look("c1", []procnet.Socket{dns, out}, seen, lp, got.Emit)
	require.Equal(t, []sockSeen{
		{"closed", "tcp", "egress", "127.0.0.1:40000", "127.0.0.1:4444"},
		{"closed", "tcp", "egress", "127.0.0.1:4444", "127.0.0.1:40000"},
		{"established", "tcp", "egress", "10.0.0.2:40001", "10.0.0.9:443"},
	}, sockEvents(t, got.All()))

	got = sourcetest.Recorder{}
	s.look("c1", []procnet.Socket{dns, out}, seen, lp, got.Emit)
	require.Empty(t, got.All(), "no change, nothing published")
}

func TestSocketMonitorBoundsEvents(t *testing.T) {
	t.Parallel()
	s := newTestSocketMonitor("")
	var socks []procnet.Socket
	for i := range maxSocketEvents + 10 {
		socks = append(socks, sock(procnet.TCP, "0.0.0.0:1", "0.0.0.0:0", procnet.Listen, uint64(i+1)))
	}
	var got sourcetest.Recorder
	seen, lp := s.look("c1", socks, nil, nil, got.Emit)
	require.Len(t, got.All(), maxSocketEvents)
	s.look("c1", socks, seen, lp, got.Emit)
	require.Len(t, got.All(), maxSocketEvents+10, "the rest at the next look")
}

func TestSocketMonitorReadsProc(t *testing.T) {
	t.Parallel()
	proc := t.TempDir()
	dir := filepath.Join(proc, "42", "net")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	for _, name := range []string{"tcp", "udp"} {
		data, err := os.ReadFile(filepath.Join("../../procnet/testdata", name))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), data, 0o644))
	}
	s := newTestSocketMonitor(proc)
	var got sourcetest.Recorder
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- s.Monitor(ctx, &source.Container{ID: "c1", InitPID: 42}, got.Emit) }()
	require.Eventually(t, func() bool { return len(got.All()) == 6 }, 5*time.Second, 5*time.Millisecond)
	require.NoError(t, os.RemoveAll(filepath.Join(proc, "42")))
	require.NoError(t, <-done, "the process is gone: the monitor ends")
	cancel()

	require.NoError(t, s.Monitor(t.Context(), &source.Container{ID: "c2", InitPID: 42,
		Config: event.ContainerConfig{NetworkMode: "host"}}, got.Emit))
	require.Equal(t, 1.0, testutil.ToFloat64(s.m.skipped), "host network is skipped")
}
