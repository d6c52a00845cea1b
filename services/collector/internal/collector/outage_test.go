package collector

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/testkit/dockertest"
	"github.com/whalewatch/whalewatch/testkit/natstest"
)

// socketProxy forwards a unix socket to the Docker engine's, and can be cut
// (listener and every connection closed: the engine seems gone) and restored.
type socketProxy struct {
	path, target string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newSocketProxy(t *testing.T, target string) *socketProxy {
	t.Helper()
	dir, err := os.MkdirTemp("", "ww-proxy-") // short: unix socket paths are limited to 107 bytes
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	p := &socketProxy{path: filepath.Join(dir, "docker.sock"), target: target, conns: map[net.Conn]struct{}{}}
	p.restore(t)
	t.Cleanup(func() {
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *socketProxy) restore(t *testing.T) {
	t.Helper()
	_ = os.Remove(p.path)
	ln, err := net.Listen("unix", p.path)
	require.NoError(t, err)
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Go(func() { p.serve(c) })
		}
	})
}

func (p *socketProxy) serve(c net.Conn) {
	up, err := net.Dial("unix", p.target)
	if err != nil {
		_ = c.Close()
		return
	}
	p.mu.Lock()
	if p.ln == nil { // cut meanwhile
		p.mu.Unlock()
		_ = c.Close()
		_ = up.Close()
		return
	}
	p.conns[c], p.conns[up] = struct{}{}, struct{}{}
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
	_ = c.Close()
	_ = up.Close()
	<-done
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, up)
	p.mu.Unlock()
}

func (p *socketProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		_ = p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		_ = c.Close()
	}
}

// The engine goes away (a proxy in front of its socket is cut), a container
// starts meanwhile, the engine comes back: the collector reconnects, re-lists
// and reports the container it could not see start.
func TestIntegrationDockerOutage(t *testing.T) {
	t.Parallel()
	dockertest.BusyboxImage(t)
	p := newSocketProxy(t, "/var/run/docker.sock")
	dc, err := NewDockerClient("unix://" + p.path)
	require.NoError(t, err)
	t.Cleanup(func() { _ = dc.Close() })
	h := startCollectorWith(t, dc, func(c *Config) {
		c.ProcessPollInterval = time.Second
		c.ProcessSource = ModeAuto
	})

	p.cut()
	natstest.Eventually(t, waitFor, func() bool {
		return testutil.ToFloat64(h.c.m.dockerErrors.WithLabelValues("events")) >= 1
	}, "the collector did not notice the engine went away")
	id := dockertest.Run(t, nil, "sleep", "302") // through the real socket
	p.restore(t)

	cfg := h.wait(t, "config of the container started during the outage", of(id, event.TelemetryConfig))
	require.Equal(t, []string{"sleep", "302"}, cfg.e.Whalewatch.Config.Cmd)
	h.wait(t, "its lifecycle start (replayed from the engine)", and(of(id, event.TelemetryLifecycle), action("start")))
	require.GreaterOrEqual(t, testutil.ToFloat64(h.c.m.reconnects), 1.0)
	h.wait(t, "its processes", and(of(id, event.TelemetryProcess), procName("sleep")))
}

// NATS goes down: the publish queue holds what fits, drops the rest with a
// metric and a log line, never blocks its producers, and publishes what it
// held once the server (restarted on its store) is back.
func TestNATSOutageBoundedQueueRecovers(t *testing.T) {
	t.Parallel()
	opts := &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true}
	s := runNATS(t, opts)
	opts.Port = s.Addr().(*net.TCPAddr).Port

	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	var cfg bus.Config
	cfg.URL = s.ClientURL()
	nc, err := bus.Connect(cfg, "outage-test", log)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	streams := testConfig(t).NATS.Streams
	require.NoError(t, bus.EnsureStreams(t.Context(), js, streams))

	const size, sent = 5, 30
	m := newMetrics(prometheus.NewRegistry(), func() float64 { return 0 })
	q := newQueue(size, bus.NewEventPublisher(js, prometheus.NewRegistry()), m, log)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan struct{})
	go func() { defer close(ran); q.run(ctx) }()

	q.enqueue(telemetry("before"))
	stream, err := js.Stream(t.Context(), bus.StreamTelemetry)
	require.NoError(t, err)
	natstest.Eventually(t, waitFor, func() bool {
		info, err := stream.Info(t.Context())
		return err == nil && info.State.Msgs == 1
	}, "first event not stored")

	s.Shutdown()
	s.WaitForShutdown()
	start := time.Now()
	for i := range sent {
		q.enqueue(telemetry(fmt.Sprintf("during-%02d", i)))
	}
	require.Less(t, time.Since(start), time.Second, "enqueue never blocks on NATS")
	dropped := testutil.ToFloat64(m.dropped.WithLabelValues("queue_full"))
	require.GreaterOrEqual(t, dropped, float64(sent-size-1), "at most the queue and the event in flight are held")
	require.Equal(t, float64(sent)+1, dropped+testutil.ToFloat64(m.events.WithLabelValues("process")))
	require.Contains(t, logs.String(), "publish queue full, dropping events")

	runNATS(t, opts) // same port, same store
	q.close()
	select {
	case <-ran:
	case <-time.After(2 * waitFor):
		t.Fatal("queue not drained after NATS came back")
	}
	info, err := stream.Info(t.Context())
	require.NoError(t, err)
	require.Equal(t, uint64(1+sent)-uint64(dropped), info.State.Msgs, "every held event stored, once")
	require.Zero(t, testutil.ToFloat64(m.dropped.WithLabelValues("shutdown")))
}

func runNATS(t *testing.T, opts *server.Options) *server.Server {
	t.Helper()
	s, err := server.NewServer(opts)
	require.NoError(t, err)
	go s.Start()
	require.True(t, s.ReadyForConnections(10*time.Second), "nats server did not start")
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
