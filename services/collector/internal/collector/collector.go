// Package collector watches one Docker host and publishes what happens in its
// containers as telemetry: lifecycle events from the engine's event stream,
// a configuration snapshot of each container it sees start, the processes
// running in each container, and their resource usage, logs, filesystem
// changes and sockets; and whether the Engine API is open over TCP.
//
// Structure: one goroutine reads the engine's event stream and owns the set
// of running containers; each running container has a watcher, a goroutine
// per monitor (process source, resources, logs, files, sockets) cancelled
// when the container dies; every event goes through a bounded queue to one publisher goroutine.
package collector

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/service"
)

// Run connects to NATS and the Docker engine and runs the collector until ctx
// ends.
func Run(ctx context.Context, cfg Config, log *slog.Logger, reg *prometheus.Registry) error {
	rt, err := service.Connect("collector", cfg.NATS, cfg.Admin, log, reg)
	if err != nil {
		return err
	}
	defer rt.Close()
	js := rt.JS
	dc, err := NewDockerClient(cfg.DockerHost)
	if err != nil {
		return err
	}
	defer dc.Close()
	col, err := New(dc, js, cfg, log, reg)
	if err != nil {
		return err
	}
	responder, err := newResponder(dc, js, col.queue.pub, cfg, log, reg)
	if err != nil {
		return err
	}
	rt.Admin.AddCheck("docker", col.DockerReady)
	return rt.Serve(ctx, cfg.NATS.Streams, func(ctx context.Context, g *errgroup.Group) error {
		g.Go(func() error { return responder.Run(ctx) })
		return col.Run(ctx)
	})
}

// Collector watches one Docker host. Run it once.
type Collector struct {
	cfg      Config
	host     string
	docker   dockerAPI
	queue    *queue
	procs    processSource
	monitors []monitor
	m        *metrics
	log      *slog.Logger
	now      func() time.Time

	// hostMonitors run one goroutine each for the whole host (procconn.go).
	hostMonitors []hostMonitor

	mu    sync.RWMutex
	cache map[string]*containerInfo // by full container id: inspected, running or recently started

	// Owned by the event loop goroutine.
	watchers map[string]context.CancelFunc
	wg       sync.WaitGroup // every monitor goroutine

	synced     chan struct{} // closed after the first reconciliation with the engine
	syncedOnce sync.Once
}

// New returns a collector that reads the engine through docker and publishes
// on js. It registers its metrics on reg.
func New(docker *client.Client, js bus.Publisher, cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Collector, error) {
	c, err := newCollector(newDockerAPI(docker), bus.NewEventPublisher(js, reg), cfg, log, reg)
	if err != nil {
		return nil, err
	}
	if err := c.selectProcessSource(reg, openProcConnector); err != nil {
		return nil, err
	}
	return c, nil
}

func newCollector(docker dockerAPI, pub eventPublisher, cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Collector, error) {
	host, err := cfg.hostName()
	if err != nil {
		return nil, err
	}
	c := &Collector{
		cfg:      cfg,
		host:     host,
		docker:   docker,
		log:      log,
		now:      time.Now,
		cache:    map[string]*containerInfo{},
		watchers: map[string]context.CancelFunc{},
		synced:   make(chan struct{}),
	}
	c.m = newMetrics(reg, func() float64 { return float64(len(c.queue.ch)) })
	c.queue = newQueue(cfg.QueueSize, pub, c.m, log)
	c.procs = &topPoller{
		docker:   c.docker,
		host:     host,
		interval: cfg.ProcessPollInterval,
		log:      log,
		errors:   c.m.dockerErrors.WithLabelValues("top"),
		now:      time.Now,
	}
	c.monitors = []monitor{c.procs}
	mons, exposure := c.telemetryMonitors(reg) // monitors.go
	c.monitors = append(c.monitors, mons...)
	if exposure != nil {
		c.hostMonitors = append(c.hostMonitors, exposure)
	}
	c.m.processMode.WithLabelValues(c.procs.Mode()).Set(1)
	return c, nil
}

// DockerReady is a readiness check: the engine answers.
func (c *Collector) DockerReady(ctx context.Context) error {
	if _, err := c.docker.Ping(ctx); err != nil {
		return fmt.Errorf("docker: %w", err)
	}
	return nil
}

// Run watches the engine until ctx ends. Then it stops the watchers and
// publishes what is queued for at most the shutdown timeout.
func (c *Collector) Run(ctx context.Context) error {
	c.log.Info("collector starting", "host", c.host, "process_mode", c.procs.Mode(),
		"process_poll_interval", c.cfg.ProcessPollInterval, "queue_size", c.cfg.QueueSize)

	pubCtx, cancelPub := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelPub()
	stopTimer := context.AfterFunc(ctx, func() { time.AfterFunc(c.cfg.Admin.ShutdownTimeout, cancelPub) })
	defer stopTimer()
	published := make(chan struct{})
	go func() {
		defer close(published)
		c.queue.run(pubCtx)
	}()
	for _, hm := range c.hostMonitors {
		c.wg.Go(func() {
			if err := hm.Run(ctx, c.queue.enqueue); err != nil && ctx.Err() == nil {
				c.log.Error("host monitor stopped", "err", err)
			}
		})
	}

	c.watchEvents(ctx)

	for id := range c.watchers {
		c.stopWatch(id)
	}
	c.wg.Wait()
	c.queue.close() // every producer has stopped
	<-published
	c.log.Info("collector stopped")
	return nil
}

const (
	minBackoff = 500 * time.Millisecond
	maxBackoff = 30 * time.Second
	// callTimeout bounds one Docker API call, so that a stuck engine cannot
	// stall the event loop or a watcher for ever.
	callTimeout = 10 * time.Second
)

// watchEvents follows the engine's event stream until ctx ends. After an
// error it reconnects from the time of the last event it read (the engine
// replays from its buffer; replayed events keep their ids, so JetStream
// stores them once) and re-lists the running containers, so that nothing
// started or stopped meanwhile is missed. The first subscription asks for no
// replay: the listing that follows it covers the past, and the collector's
// clock is never compared with a remote engine's.
func (c *Collector) watchEvents(ctx context.Context) {
	var since time.Time // engine time of the last event read
	delay := minBackoff
	for {
		began := c.now()
		err := c.streamOnce(ctx, &since)
		if ctx.Err() != nil {
			return
		}
		if since.IsZero() {
			since = began // no event read yet: replay from when the stream opened
		}
		c.m.dockerErrors.WithLabelValues("events").Inc()
		if c.now().Sub(began) > time.Minute {
			delay = minBackoff
		}
		c.log.Warn("docker event stream failed, reconnecting", "err", err, "since", since, "backoff", delay)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(delay*2, maxBackoff)
		c.m.reconnects.Inc()
	}
}

// streamOnce subscribes, reconciles the running containers, then handles
// events until the stream fails or ctx ends, advancing since. It subscribes
// first, so a container that starts while the list is read is seen either way.
func (c *Collector) streamOnce(ctx context.Context, since *time.Time) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	opts := events.ListOptions{Filters: filters.NewArgs(
		filters.Arg("type", string(events.ContainerEventType)),
		filters.Arg("type", string(events.ImageEventType)),
		filters.Arg("type", string(events.NetworkEventType)),
	)}
	if !since.IsZero() {
		opts.Since = fmt.Sprintf("%d.%09d", since.Unix(), since.Nanosecond())
	}
	msgs, errs := c.docker.Events(sctx, opts)
	if err := c.resync(ctx); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errs:
			if err == nil {
				err = io.EOF
			}
			return err
		case m := <-msgs:
			c.handle(ctx, m)
			if t := eventTime(m); t.After(*since) {
				*since = t
			}
		}
	}
}

// resync makes the watched set match the running containers: a new one is
// inspected, its configuration published and its watcher started; a watched
// one that no longer runs is let go.
func (c *Collector) resync(ctx context.Context) error {
	lctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	list, err := c.docker.ContainerList(lctx, container.ListOptions{})
	if err != nil {
		c.m.dockerErrors.WithLabelValues("list").Inc()
		return fmt.Errorf("listing containers: %w", err)
	}
	running := make(map[string]bool, len(list))
	now := c.now()
	for _, s := range list {
		running[s.ID] = true
		if _, ok := c.watchers[s.ID]; ok {
			continue
		}
		if info := c.inspect(ctx, s.ID); info != nil {
			c.queue.enqueue(configEvent(c.host, info, now, now))
			c.startWatch(ctx, info)
		}
	}
	for id := range c.watchers {
		if !running[id] {
			c.stopWatch(id)
			c.forget(id)
		}
	}
	c.syncedOnce.Do(func() { close(c.synced) })
	return nil
}

func (c *Collector) handle(ctx context.Context, m events.Message) {
	now := c.now()
	switch m.Type {
	case events.ContainerEventType:
		c.handleContainer(ctx, m, now)
	case events.NetworkEventType:
		var ctr *event.Container
		if id := m.Actor.Attributes["container"]; id != "" {
			ctr = c.containerFields(id, nil)
		}
		c.queue.enqueue(lifecycleEvent(c.host, m, ctr, now))
	case events.ImageEventType:
		c.queue.enqueue(lifecycleEvent(c.host, m, nil, now))
	}
}

func (c *Collector) handleContainer(ctx context.Context, m events.Message, now time.Time) {
	id := m.Actor.ID
	verb, detail := splitAction(string(m.Action))
	var info *containerInfo
	switch verb {
	case "top":
		return // the docker-top process source causes one per poll
	case "create", "start", "update", "rename":
		info = c.inspect(ctx, id)
	}
	e := lifecycleEvent(c.host, m, c.containerFields(id, m.Actor.Attributes), now)
	if strings.HasPrefix(verb, "exec_") {
		c.addExecProcess(ctx, e, verb, detail, m.Actor)
	}
	c.queue.enqueue(e)

	switch verb {
	case "start":
		if info != nil {
			c.queue.enqueue(configEvent(c.host, info, eventTime(m), now))
			if info.Running { // not so for a replayed start of a container stopped since
				c.startWatch(ctx, info)
			}
		}
	case "create", "update":
		// At create, so that a container that is never started (or cannot
		// start, like a privileged one on a locked-down host) is still judged.
		if info != nil {
			c.queue.enqueue(configEvent(c.host, info, eventTime(m), now))
		}
	case "die", "destroy":
		c.stopWatch(id)
		c.forget(id)
	}
}

// addExecProcess fills process.* of an exec_* event. For exec_start the
// engine's exec record gives the exact argv, user and pid; the command in the
// event's action is the fallback.
func (c *Collector) addExecProcess(ctx context.Context, e *event.Event, verb, detail string, actor events.Actor) {
	var ex *execDetails
	if execID := actor.Attributes["execID"]; verb == "exec_start" && execID != "" {
		ictx, cancel := context.WithTimeout(ctx, callTimeout)
		d, err := c.docker.ExecInspect(ictx, execID)
		cancel()
		switch {
		case err == nil:
			ex = &d
		case ctx.Err() == nil:
			c.m.dockerErrors.WithLabelValues("exec_inspect").Inc()
			c.log.Debug("exec inspect failed, using the event's command", "exec_id", execID, "err", err)
		}
	}
	userSpec, known := "", false
	if info := c.cached(actor.ID); info != nil {
		userSpec, known = info.User, true
	}
	p := execProcess(detail, ex, userSpec)
	if ex != nil && ex.ProcessConfig != nil && ex.ProcessConfig.User == "" && !known {
		p.User = nil // the container's user is unknown, so is the exec's
	}
	if p.CommandLine == "" && p.PID == 0 {
		return // exec_die: the event carries no command
	}
	e.Process = p
	if ex != nil && ex.ProcessConfig != nil && ex.ProcessConfig.Privileged != nil && *ex.ProcessConfig.Privileged {
		e.Tags = append(e.Tags, "privileged-exec")
	}
}

// inspect reads a container and caches what the collector keeps of it; nil
// when the container is gone.
func (c *Collector) inspect(ctx context.Context, id string) *containerInfo {
	ictx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := c.docker.ContainerInspect(ictx, id)
	if err != nil {
		if ctx.Err() == nil {
			c.m.dockerErrors.WithLabelValues("inspect").Inc()
			c.log.Debug("inspect failed", "container_id", id, "err", err)
		}
		return nil
	}
	info := infoFromInspect(resp)
	if info.ID == "" {
		return nil
	}
	c.mu.Lock()
	c.cache[info.ID] = info
	c.mu.Unlock()
	return info
}

func (c *Collector) cached(id string) *containerInfo {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.cache[id]
}

func (c *Collector) forget(id string) {
	c.mu.Lock()
	delete(c.cache, id)
	c.mu.Unlock()
}

// containerFields is container.* of an event about id: from the cache, else
// from the event's attributes, else the id alone.
func (c *Collector) containerFields(id string, attrs map[string]string) *event.Container {
	if info := c.cached(id); info != nil {
		return info.ecs()
	}
	if attrs != nil {
		return containerFromAttributes(id, attrs)
	}
	return &event.Container{ID: id}
}

// startWatch starts the watcher of a running container unless it runs.
func (c *Collector) startWatch(ctx context.Context, info *containerInfo) {
	if _, ok := c.watchers[info.ID]; ok {
		return
	}
	wctx, cancel := context.WithCancel(ctx)
	c.watchers[info.ID] = cancel
	c.m.watched.Set(float64(len(c.watchers)))
	emit := func(e *event.Event) {
		if cur := c.cached(info.ID); cur != nil {
			e.Container = cur.ecs() // current name after a rename
		} else {
			e.Container = info.ecs()
		}
		c.queue.enqueue(e)
	}
	for _, mon := range c.monitors {
		c.wg.Go(func() {
			if err := mon.Monitor(wctx, info, emit); err != nil && wctx.Err() == nil {
				c.log.Warn("container monitor stopped", "container_id", info.ID, "err", err)
			}
		})
	}
	c.log.Debug("watching container", "container_id", info.ID, "name", info.Name)
}

func (c *Collector) stopWatch(id string) {
	if cancel, ok := c.watchers[id]; ok {
		cancel()
		delete(c.watchers, id)
		c.m.watched.Set(float64(len(c.watchers)))
	}
}
