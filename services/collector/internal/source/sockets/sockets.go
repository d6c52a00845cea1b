// Package sockets is the network source of the fallback chain: each running
// container's socket tables, read from /proc every interval. With the kernel
// sensor (every connect, accept and TCP state change as it happens) it does
// not run.
package sockets

import (
	"context"
	"errors"
	"flag"
	"io/fs"
	"log/slog"
	"net/netip"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/poll"
	"github.com/whalewatch/whalewatch/services/collector/internal/procnet"
	"github.com/whalewatch/whalewatch/services/collector/internal/source"
)

// Config configures the socket source.
type Config struct {
	// Interval between two reads of a container's tables; 0 disables the
	// source.
	Interval time.Duration
}

// RegisterFlags registers the socket source's flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.DurationVar(&c.Interval, "socket-interval", 10*time.Second, "how often each running container's socket tables are read for new listeners and connections, when the kernel sensor does not report them (0 disables)")
}

// Validate checks c.
func (c *Config) Validate() error {
	if c.Interval != 0 && c.Interval < 100*time.Millisecond {
		return errors.New("socket-interval must be 0 (disabled) or at least 100ms")
	}
	return nil
}

// Monitor reads a container's socket tables (/proc/<pid>/net/{tcp,
// tcp6,udp,udp6} of its init process: every process of a network namespace
// sees the same tables) every interval and publishes changes, one network
// event per socket: a new listener (TCP LISTEN, or a bound unconnected UDP
// socket), a new established or SYN_SENT connection, and the end of one
// reported before (state closed). source.* is the container's end,
// destination.* the remote end. The first read publishes what is already
// there.
//
// Direction: a listener and a connection whose local port is (or was at the
// previous read) a listening port are ingress; other connections egress.
//
// Not watched: containers with --network host, whose tables are the host's
// (every such container would report the host's sockets; counted in
// whalewatch_collector_socket_skipped_total). A --network container:<id>
// container reports the tables it shares with <id>. Sockets that open and
// close within one interval are missed, and the owning process is not
// resolved.
//
// Cost: reading a socket table walks the kernel's whole hash table, whatever
// the container holds, so each look first reads the namespace's socket
// counters (procnet.Fingerprint, constant time) and reads the tables only
// when they changed, or at least every socketFullEvery looks: a listener or
// bound UDP socket that replaced another within one interval is seen by then.
//
// Bounds: at most maxSockets sockets read per look, at most maxSocketEvents
// events per look (the rest are not remembered, so they are published at
// later looks).
type Monitor struct {
	host     string
	interval time.Duration
	procRoot string
	log      *slog.Logger
	now      func() time.Time
	m        *metrics
}

type metrics struct {
	overflow prometheus.Counter
	skipped  prometheus.Counter
	looks    *prometheus.CounterVec // by result: read, unchanged
}

// New returns the socket source of cfg.
func New(cfg Config, mounts source.HostMounts, host string, log *slog.Logger, reg prometheus.Registerer) *Monitor {
	m := &metrics{
		overflow: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "whalewatch_collector_socket_overflow_total",
			Help: "Socket table reads cut at the per-container limit.",
		}),
		skipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "whalewatch_collector_socket_skipped_total",
			Help: "Containers whose sockets are not watched (host network, or /proc unreadable).",
		}),
		looks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whalewatch_collector_socket_looks_total",
			Help: "Socket looks of containers, by result: read (the tables were read) or unchanged (the namespace's counters had not moved).",
		}, []string{"result"}),
	}
	reg.MustRegister(m.overflow, m.skipped, m.looks)
	return &Monitor{host: host, interval: cfg.Interval, procRoot: mounts.Proc, log: log, now: time.Now, m: m}
}

const (
	maxSockets      = 16384
	maxSocketEvents = 1000
	socketFullEvery = 12 // one minute at the default interval
)

type sockKey struct {
	transport     procnet.Transport
	local, remote netip.AddrPort
	inode         uint64
}

// Socket states published in whalewatch.socket.state.
const (
	sockListen      = "listen"
	sockEstablished = "established"
	sockSynSent     = "syn_sent"
	sockClosed      = "closed"
)

func (s *Monitor) Monitor(ctx context.Context, ctr *source.Container, emit source.Emit) error {
	log := s.log.With("container_id", ctr.ID)
	if ctr.Config.NetworkMode == "host" {
		s.m.skipped.Inc()
		log.Debug("host network: sockets not watched")
		return nil
	}
	if ctr.InitPID <= 0 {
		return nil
	}
	seen := map[sockKey]string{}
	var prevListen map[listenPort]bool
	cutWarned := false
	var lastFP string
	sinceFull := 0
	loop := poll.Loop{What: "socket tables", Interval: s.interval, Log: log}
	return loop.Run(ctx, func(ctx context.Context) error {
		fp, err := procnet.Fingerprint(s.procRoot, ctr.InitPID)
		if err == nil && fp == lastFP && sinceFull < socketFullEvery {
			sinceFull++
			s.m.looks.WithLabelValues("unchanged").Inc()
			return nil
		}
		lastFP, sinceFull = fp, 0
		s.m.looks.WithLabelValues("read").Inc()
		socks, cut, err := procnet.Read(s.procRoot, ctr.InitPID, maxSockets)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, fs.ErrNotExist) {
				return poll.ErrStop // the container's process is gone: it died
			}
			s.m.skipped.Inc()
			return poll.Fatal(err) // permission denied: no host PID namespace or not root
		}
		if cut && !cutWarned {
			s.m.overflow.Inc()
			log.Warn("socket tables longer than the limit, reading the first sockets only", "limit", maxSockets)
		} else if cut {
			s.m.overflow.Inc()
		}
		cutWarned = cut
		seen, prevListen = s.look(ctr.ID, socks, seen, prevListen, emit)
		return nil
	})
}

type listenPort struct {
	transport procnet.Transport
	port      uint16
}

// look compares one read with the previous one, emits the changes and
// returns the new state and listening ports.
func (s *Monitor) look(containerID string, socks []procnet.Socket, seen map[sockKey]string,
	prevListen map[listenPort]bool, emit source.Emit) (map[sockKey]string, map[listenPort]bool) {
	cur := make(map[sockKey]string, len(socks))
	listen := map[listenPort]bool{}
	for _, sk := range socks {
		st := socketState(sk)
		if st == "" {
			continue
		}
		cur[sockKey{sk.Transport, sk.Local, sk.Remote, sk.Inode}] = st
		if st == sockListen {
			listen[listenPort{sk.Transport, sk.Local.Port()}] = true
		}
	}
	now := s.now()
	next := make(map[sockKey]string, len(cur))
	emitted := 0
	report := func(k sockKey, st string) bool {
		if emitted >= maxSocketEvents {
			return false
		}
		emitted++
		lp := listenPort{k.transport, k.local.Port()}
		ingress := st == sockListen || (st != sockSynSent && k.transport == procnet.TCP && (listen[lp] || prevListen[lp]))
		emit(socketEvent(s.host, containerID, k, st, ingress, now))
		return true
	}
	for k, st := range cur {
		if seen[k] == st || report(k, st) {
			next[k] = st
		} else if old, ok := seen[k]; ok {
			next[k] = old
		}
	}
	for k, old := range seen {
		if _, ok := cur[k]; ok {
			continue
		}
		if !report(k, sockClosed) {
			next[k] = old
		}
	}
	return next, listen
}

// socketState is the published state of a socket, "" for states not
// published (TIME_WAIT, FIN_WAIT, ...: the connection is ending and its end
// is published when it leaves the table or, here, the tracked states).
func socketState(s procnet.Socket) string {
	switch {
	case s.Transport == procnet.TCP && s.State == procnet.Listen:
		return sockListen
	case s.Transport == procnet.TCP && s.State == procnet.SynSent:
		return sockSynSent
	case s.State == procnet.Established:
		return sockEstablished
	case s.Transport == procnet.UDP && s.State == procnet.Close && s.Remote.Port() == 0:
		return sockListen
	}
	return ""
}

// socketEvent is one socket change as telemetry (ECS network: start for a
// listener or connection, end for closed, connection for connections).
func socketEvent(host, containerID string, k sockKey, state string, ingress bool, now time.Time) *event.Event {
	local := netip.AddrPortFrom(k.local.Addr().Unmap(), k.local.Port())
	remote := netip.AddrPortFrom(k.remote.Addr().Unmap(), k.remote.Port())
	netType := "ipv4"
	if local.Addr().Is6() {
		netType = "ipv6"
	}
	dir := "egress"
	if ingress {
		dir = "ingress"
	}
	e := &event.Event{
		Timestamp: now.UTC(),
		Event: event.Meta{
			ID: event.DeriveID(host, "socket", containerID, string(k.transport), k.local.String(), k.remote.String(),
				strconv.FormatUint(k.inode, 10), state),
			Kind:     event.KindEvent,
			Category: []string{"network"},
			Action:   "socket-" + state,
			Dataset:  event.TelemetryNetwork.Dataset(),
			Module:   event.Module,
			Created:  now.UTC(),
		},
		Host:    event.Host{Name: host},
		Source:  &event.Endpoint{IP: local.Addr().String(), Port: int(local.Port())},
		Network: &event.Network{Transport: string(k.transport), Type: netType, Direction: dir},
		Whalewatch: event.Whalewatch{
			SchemaVersion: event.SchemaVersion,
			Telemetry:     event.TelemetryNetwork,
			Socket:        &event.Socket{State: state},
		},
	}
	listener := remote.Port() == 0 && remote.Addr().IsUnspecified()
	switch {
	case state == sockClosed && listener:
		e.Event.Type = []string{"end"}
	case state == sockClosed:
		e.Event.Type = []string{"connection", "end"}
	case state == sockListen:
		e.Event.Type = []string{"start"}
	default:
		e.Event.Type = []string{"connection", "start"}
	}
	e.Message = string(k.transport) + " " + state + " " + local.String()
	if !listener {
		e.Destination = &event.Endpoint{IP: remote.Addr().String(), Port: int(remote.Port())}
		e.Message += " -> " + remote.String()
	}
	return e
}
