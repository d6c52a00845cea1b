// Package natscluster runs a three-node NATS JetStream cluster in-process for
// tests, and kills and restarts the node leading a stream, a consumer or a KV
// bucket, to test that whalewatch rides through a node going away.
//
// Issue 13 asks for "a helper in pkg (test code)"; test code lives in testkit,
// this repository's test-only module, so that nats-server never becomes a
// dependency of pkg.
//
// A kill is as close to SIGKILL as an in-process server allows. Each route
// between two nodes runs through a loopback proxy owned by the pair; Kill
// first cuts every route of the node (both ends see the TCP connection close,
// as they would when the kernel closes a killed process's sockets), then shuts
// the server down. nats-server's Shutdown steps its Raft leaders down first,
// a goodbye a killed process never says: with the routes cut it reaches no
// one, so the others elect new leaders after their election timeout, as after
// a real crash. Clients connected to the node see their connection close and
// reconnect to another node.
package natscluster

import (
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Size is the number of nodes: the smallest cluster that keeps a quorum of
// R3 streams with one node gone.
const Size = 3

// account is the account streams live in when the server has no accounts.
const account = server.DEFAULT_GLOBAL_ACCOUNT

// Cluster is a running three-node cluster.
type Cluster struct {
	tb      testing.TB
	mu      sync.Mutex
	servers [Size]*server.Server
	opts    [Size]*server.Options
	proxies []*proxy
}

// New starts a three-node JetStream cluster on loopback with random ports
// and stores in temporary directories, and returns once it is ready: a meta
// leader that sees every node online with JetStream (before that, creating
// an R3 stream fails with "no suitable peers for placement"). It is shut down when the test ends.
func New(tb testing.TB) *Cluster {
	tb.Helper()
	c := &Cluster{tb: tb}
	// proxy[from][to] carries the routes node from opens to node to,
	// wherever to listens now.
	var via [Size][Size]*proxy
	for from := range Size {
		for to := range Size {
			if from == to {
				continue
			}
			p := newProxy(tb, from, to, func() string {
				if s := c.Server(to); s != nil {
					if a := s.ClusterAddr(); a != nil {
						return a.String()
					}
				}
				return ""
			})
			via[from][to] = p
			c.proxies = append(c.proxies, p)
		}
	}
	for i := range Size {
		var routes []*url.URL
		for to := range Size {
			if to != i {
				routes = append(routes, &url.URL{Scheme: "nats-route", Host: via[i][to].addr})
			}
		}
		c.opts[i] = &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			// Chosen by the server when it listens (no window in which
			// another test can take it); kept for restarts.
			Port:      server.RANDOM_PORT,
			JetStream: true,
			StoreDir:  tb.TempDir(),
			NoLog:     true,
			NoSigs:    true,
			Cluster: server.ClusterOpts{
				Name: "whalewatch-test",
				Host: "127.0.0.1",
				// Chosen at each start, as it listens: nodes reach it
				// only through the proxies, which look it up. A port
				// picked beforehand could be taken meanwhile (by any
				// outgoing connection's local port) and the node would
				// never start.
				Port: server.RANDOM_PORT,
				// Others learn of a node by this address: one of the
				// proxies to it, so that gossiped routes are cut too.
				Advertise: via[(i+1)%Size][i].addr,
			},
			Routes: routes,
		}
	}
	for i := range Size {
		c.start(i)
	}
	tb.Cleanup(func() {
		for i := range Size {
			c.mu.Lock()
			s := c.servers[i]
			c.mu.Unlock()
			if s != nil {
				s.Shutdown()
				s.WaitForShutdown()
			}
		}
		for _, p := range c.proxies {
			p.close()
		}
	})
	c.WaitReady(30 * time.Second)
	return c
}

// WaitReady waits until the meta leader sees every running node online.
func (c *Cluster) WaitReady(timeout time.Duration) {
	c.tb.Helper()
	c.wait(timeout, "meta leader seeing every node", func() int {
		running := 0
		for i := range Size {
			if c.Server(i) != nil {
				running++
			}
		}
		return c.find(func(s *server.Server) bool { return len(s.JetStreamClusterPeers()) == running })
	})
}

func (c *Cluster) start(i int) {
	c.tb.Helper()
	opts := c.opts[i].Clone()
	if opts.Port != server.RANDOM_PORT && !free(opts.Port) {
		// Taken while the node was down (an outgoing connection's local
		// port): listen elsewhere. Clients reconnect to the other nodes
		// and learn the new address from them.
		opts.Port = server.RANDOM_PORT
	}
	s, err := server.NewServer(opts)
	if err != nil {
		c.tb.Fatalf("nats server %d: %v", i, err)
	}
	go s.Start()
	// Generous: make test starts many of these at once under -race.
	if !s.ReadyForConnections(30 * time.Second) {
		c.tb.Fatalf("nats server %d did not start", i)
	}
	c.mu.Lock()
	c.opts[i].Port = s.Addr().(*net.TCPAddr).Port // a restart listens where clients reconnect
	c.servers[i] = s
	c.mu.Unlock()
}

// URLs is the client URLs of every node, comma-separated (NATS_URL).
func (c *Cluster) URLs() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	urls := make([]string, Size)
	for i := range Size {
		urls[i] = fmt.Sprintf("nats://127.0.0.1:%d", c.opts[i].Port)
	}
	return strings.Join(urls, ",")
}

// Connect connects to the cluster (any node, reconnecting for ever) and
// returns the connection and its JetStream context; the connection is closed
// when the test ends.
func (c *Cluster) Connect(tb testing.TB) (*nats.Conn, jetstream.JetStream) {
	tb.Helper()
	nc, err := nats.Connect(c.URLs(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		tb.Fatalf("nats connect: %v", err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatalf("jetstream: %v", err)
	}
	return nc, js
}

// Server returns node i, or nil while it is killed.
func (c *Cluster) Server(i int) *server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.servers[i]
}

// find returns the running node for which is reports true, or -1.
func (c *Cluster) find(is func(*server.Server) bool) int {
	for i := range Size {
		if s := c.Server(i); s != nil && s.Running() && is(s) {
			return i
		}
	}
	return -1
}

// MetaLeader is the node leading the JetStream meta group, or -1.
func (c *Cluster) MetaLeader() int {
	return c.find(func(s *server.Server) bool { return s.JetStreamIsLeader() })
}

// StreamLeader is the node leading stream, or -1.
func (c *Cluster) StreamLeader(stream string) int {
	return c.find(func(s *server.Server) bool { return s.JetStreamIsStreamLeader(account, stream) })
}

// ConsumerLeader is the node leading consumer on stream, or -1.
func (c *Cluster) ConsumerLeader(stream, consumer string) int {
	return c.find(func(s *server.Server) bool { return s.JetStreamIsConsumerLeader(account, stream, consumer) })
}

// KVLeader is the node leading KV bucket's stream, or -1.
func (c *Cluster) KVLeader(bucket string) int { return c.StreamLeader("KV_" + bucket) }

// WaitMetaLeader waits until the cluster has a meta leader and returns it.
func (c *Cluster) WaitMetaLeader(timeout time.Duration) int {
	c.tb.Helper()
	return c.wait(timeout, "meta leader", c.MetaLeader)
}

// WaitStreamLeader waits until stream has a leader and returns it.
func (c *Cluster) WaitStreamLeader(stream string, timeout time.Duration) int {
	c.tb.Helper()
	return c.wait(timeout, "leader of stream "+stream, func() int { return c.StreamLeader(stream) })
}

// WaitConsumerLeader waits until consumer has a leader and returns it.
func (c *Cluster) WaitConsumerLeader(stream, consumer string, timeout time.Duration) int {
	c.tb.Helper()
	return c.wait(timeout, "leader of consumer "+consumer, func() int { return c.ConsumerLeader(stream, consumer) })
}

func (c *Cluster) wait(timeout time.Duration, what string, f func() int) int {
	c.tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if i := f(); i >= 0 {
			return i
		}
		if time.Now().After(deadline) {
			c.tb.Fatalf("no %s after %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Outage measures how long after since every one of leaders (StreamLeader,
// ConsumerLeader, ... as closures) names a running node again: the
// election a kill costs, which stall bounds are built on. It polls in the
// background from now; wait returns the outage, failing the test if it
// lasts longer than timeout.
func (c *Cluster) Outage(since time.Time, leaders ...func() int) (wait func(timeout time.Duration) time.Duration) {
	done := make(chan time.Duration, 1)
	stop := make(chan struct{})
	var once sync.Once
	c.tb.Cleanup(func() { once.Do(func() { close(stop) }) }) // a test that failed before wait
	go func() {
		for {
			led := true
			for _, l := range leaders {
				if l() < 0 {
					led = false
					break
				}
			}
			if led {
				done <- time.Since(since)
				return
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return func(timeout time.Duration) time.Duration {
		c.tb.Helper()
		defer once.Do(func() { close(stop) })
		select {
		case d := <-done:
			return d
		case <-time.After(time.Until(since.Add(timeout))):
			c.tb.Fatalf("not every leader elected %v after the kill", timeout)
			return 0
		}
	}
}

// Kill cuts node i's routes and shuts it down (see the package comment).
func (c *Cluster) Kill(i int) {
	c.tb.Helper()
	c.mu.Lock()
	s := c.servers[i]
	c.servers[i] = nil
	c.mu.Unlock()
	if s == nil {
		c.tb.Fatalf("node %d is not running", i)
	}
	for _, p := range c.proxies {
		p.cut(i)
	}
	s.Shutdown()
	s.WaitForShutdown()
}

// Restart starts killed node i again on its ports and store.
func (c *Cluster) Restart(i int) {
	c.tb.Helper()
	for _, p := range c.proxies {
		p.mend(i)
	}
	c.start(i)
}

// proxy forwards route connections from one node to another and can cut
// them while either end is down.
type proxy struct {
	from, to int
	target   func() string // the address to listens on, empty while it is down
	addr     string
	ln       net.Listener
	mu       sync.Mutex
	down     map[int]bool
	conns    map[net.Conn]bool
}

func newProxy(tb testing.TB, from, to int, target func() string) *proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("proxy listen: %v", err)
	}
	p := &proxy{from: from, to: to, target: target, addr: ln.Addr().String(), ln: ln, down: map[int]bool{}, conns: map[net.Conn]bool{}}
	go p.serve()
	return p
}

func (p *proxy) serve() {
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.pipe(in)
	}
}

func (p *proxy) pipe(in net.Conn) {
	p.mu.Lock()
	cut := p.down[p.from] || p.down[p.to]
	p.mu.Unlock()
	if cut {
		in.Close()
		return
	}
	target := p.target()
	if target == "" {
		in.Close()
		return
	}
	out, err := net.DialTimeout("tcp", target, time.Second)
	if err != nil {
		in.Close()
		return
	}
	p.mu.Lock()
	if p.down[p.from] || p.down[p.to] {
		p.mu.Unlock()
		in.Close()
		out.Close()
		return
	}
	p.conns[in], p.conns[out] = true, true
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go cp(out, in)
	go cp(in, out)
	<-done
	in.Close()
	out.Close()
	<-done
	p.mu.Lock()
	delete(p.conns, in)
	delete(p.conns, out)
	p.mu.Unlock()
}

// cut closes the proxy's connections when node is one of its ends, and
// refuses new ones until mend.
func (p *proxy) cut(node int) {
	if node != p.from && node != p.to {
		return
	}
	p.mu.Lock()
	p.down[node] = true
	for conn := range p.conns {
		conn.Close()
	}
	p.mu.Unlock()
}

func (p *proxy) mend(node int) {
	p.mu.Lock()
	delete(p.down, node)
	p.mu.Unlock()
}

func (p *proxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	for conn := range p.conns {
		conn.Close()
	}
	p.mu.Unlock()
}

// free reports whether port can be listened on on loopback now.
func free(port int) bool {
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// Name is node i's server name (n1, n2, n3).
func (c *Cluster) Name(i int) string { return c.opts[i].ServerName }

// MoveStreamLeader asks stream's leader to step down in favour of node i
// (a KV bucket's stream is KV_<bucket>), and waits until i leads it: a test
// puts the leaders of a consumer, its stream and a ledger on one node, so
// that one kill takes them all, as in issue 13's worst runs.
func (c *Cluster) MoveStreamLeader(nc *nats.Conn, stream string, i int) {
	c.tb.Helper()
	c.move(nc, "$JS.API.STREAM.LEADER.STEPDOWN."+stream, i, func() int { return c.StreamLeader(stream) })
}

// MoveConsumerLeader does MoveStreamLeader for a consumer.
func (c *Cluster) MoveConsumerLeader(nc *nats.Conn, stream, consumer string, i int) {
	c.tb.Helper()
	c.move(nc, "$JS.API.CONSUMER.LEADER.STEPDOWN."+stream+"."+consumer, i, func() int { return c.ConsumerLeader(stream, consumer) })
}

func (c *Cluster) move(nc *nats.Conn, api string, i int, leader func() int) {
	c.tb.Helper()
	body := []byte(`{"placement":{"preferred":"` + c.Name(i) + `"}}`)
	deadline := time.Now().Add(30 * time.Second)
	for leader() != i {
		if time.Now().After(deadline) {
			c.tb.Fatalf("%s: node %d did not become leader", api, i)
		}
		if l := leader(); l >= 0 && l != i {
			_, _ = nc.Request(api, body, 2*time.Second)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
