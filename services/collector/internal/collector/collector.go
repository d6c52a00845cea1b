// Package collector watches one Docker host and publishes what happens in its
// containers as telemetry. It is the core the sources plug into: the set of
// running containers (driven by the Docker event stream), a goroutine per
// per-container source for each running container, one per host source, and
// one bounded queue drained by one publisher goroutine. Which sources run is
// chosen once, at start, in wiring.go.
package collector

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/service"
	"github.com/whalewatch/whalewatch/services/collector/internal/executor"
	"github.com/whalewatch/whalewatch/services/collector/internal/source"
	"github.com/whalewatch/whalewatch/services/collector/internal/source/dockerevents"
)

// Run connects to NATS and the Docker engine and runs the collector and the
// executor of response actions until ctx ends.
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
	defer col.Close()
	exec := executor.New(dc, js, col.queue.pub, cfg.Responses, col.host, cfg.NATS.Streams, log, reg)
	rt.Admin.AddCheck("docker", col.DockerReady)
	return rt.Serve(ctx, cfg.NATS.Streams, func(ctx context.Context, g *errgroup.Group) error {
		g.Go(func() error { return exec.Run(ctx) })
		return col.Run(ctx)
	})
}

// Collector watches one Docker host. Build it with New; Run it once.
type Collector struct {
	cfg    Config
	host   string
	docker dockerAPI
	queue  *queue
	m      *metrics
	log    *slog.Logger
	now    func() time.Time
	modes  modes // what wiring chose, for the log

	events       *dockerevents.Stream
	perContainer []source.PerContainer // each run for every monitored running container
	hostSources  []source.Host         // each run once for the host
	closers      []func() error        // released by Close

	mu    sync.RWMutex
	cache map[string]*source.Container // by full container id: inspected, running or recently started

	// Owned by the event loop goroutine.
	watchers map[string]context.CancelFunc
	wg       sync.WaitGroup // every source goroutine

	synced     chan struct{} // closed after the first reconciliation with the engine
	syncedOnce sync.Once
}

// DockerReady is a readiness check: the engine answers.
func (c *Collector) DockerReady(ctx context.Context) error {
	if _, err := c.docker.Ping(ctx); err != nil {
		return fmt.Errorf("docker: %w", err)
	}
	return nil
}

// Run watches the engine until ctx ends. Then it stops the sources and
// publishes what is queued for at most the shutdown timeout.
func (c *Collector) Run(ctx context.Context) error {
	c.log.Info("collector starting", "host", c.host, "process_mode", c.modes.process, "file_mode", c.modes.file,
		"network_mode", c.modes.network, "log_mode", c.modes.logs, "queue_size", c.cfg.QueueSize)

	pubCtx, cancelPub := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelPub()
	stopTimer := context.AfterFunc(ctx, func() { time.AfterFunc(c.cfg.Admin.ShutdownTimeout, cancelPub) })
	defer stopTimer()
	published := make(chan struct{})
	go func() {
		defer close(published)
		c.queue.run(pubCtx)
	}()
	for _, hs := range c.hostSources {
		c.wg.Go(func() {
			if err := hs.Run(ctx, c.queue.enqueue); err != nil && ctx.Err() == nil {
				c.log.Error("host source stopped", "source", fmt.Sprintf("%T", hs), "err", err)
			}
		})
	}

	_ = c.events.Run(ctx, handler{c})

	for id := range c.watchers {
		c.stopWatch(id)
	}
	c.wg.Wait()
	c.queue.close() // every producer has stopped
	<-published
	c.log.Info("collector stopped")
	return nil
}

// Close releases what the sources hold (the kernel sensor's programs, the
// inotify instance). Call it after Run returned.
func (c *Collector) Close() error {
	var first error
	for _, f := range c.closers {
		if err := f(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// handler is the collector as the event stream's dockerevents.Handler.
type handler struct{ c *Collector }

func (h handler) Resync(ctx context.Context) error             { return h.c.resync(ctx) }
func (h handler) Handle(ctx context.Context, m events.Message) { h.c.handle(ctx, m) }

// resync makes the watched set match the running containers: a new one is
// inspected, its configuration published and its watcher started; a watched
// one that no longer runs is let go.
func (c *Collector) resync(ctx context.Context) error {
	lctx, cancel := context.WithTimeout(ctx, source.CallTimeout)
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
			c.queue.enqueue(source.ConfigEvent(c.host, info, now, now))
			c.remember(info)
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
		c.queue.enqueue(dockerevents.LifecycleEvent(c.host, m, ctr, now))
	case events.ImageEventType:
		c.queue.enqueue(dockerevents.LifecycleEvent(c.host, m, nil, now))
	}
}

func (c *Collector) handleContainer(ctx context.Context, m events.Message, now time.Time) {
	id := m.Actor.ID
	verb, detail := dockerevents.SplitAction(string(m.Action))
	var info *source.Container
	switch verb {
	case "top":
		return // the docker-top process source causes one per poll
	case "create", "start", "update", "rename":
		info = c.inspect(ctx, id)
	}
	ctr := c.containerFields(id, m.Actor.Attributes)
	if info != nil {
		ctr = info.ECS()
	}
	e := dockerevents.LifecycleEvent(c.host, m, ctr, now)
	if strings.HasPrefix(verb, "exec_") {
		c.addExecProcess(ctx, e, verb, detail, m.Actor)
	}
	c.queue.enqueue(e)

	// The configuration goes out before the container is known to the
	// sources (the cache): the detector judges a process against the
	// container's configuration (its health check), so a process must not
	// overtake it.
	if info != nil && verb != "rename" {
		c.queue.enqueue(source.ConfigEvent(c.host, info, dockerevents.EventTime(m), now))
	}
	if info != nil {
		c.remember(info)
	}
	switch verb {
	case "start":
		if info != nil {
			if info.Running { // not so for a replayed start of a container stopped since
				c.startWatch(ctx, info)
			}
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
	var ex *dockerevents.ExecDetails
	if execID := actor.Attributes["execID"]; verb == "exec_start" && execID != "" {
		ictx, cancel := context.WithTimeout(ctx, source.CallTimeout)
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
	p := dockerevents.ExecProcess(detail, ex, userSpec)
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

// inspect reads a container; nil when the container is gone.
func (c *Collector) inspect(ctx context.Context, id string) *source.Container {
	ictx, cancel := context.WithTimeout(ctx, source.CallTimeout)
	defer cancel()
	resp, err := c.docker.ContainerInspect(ictx, id)
	if err != nil {
		if ctx.Err() == nil {
			c.m.dockerErrors.WithLabelValues("inspect").Inc()
			c.log.Debug("inspect failed", "container_id", id, "err", err)
		}
		return nil
	}
	info := source.FromInspect(resp)
	if info.ID == "" {
		return nil
	}
	return info
}

// remember caches info: from now on the sources attribute its container's
// events with it. A configuration snapshot (create, start, update; at
// create so that a container that is never started, or cannot start like a
// privileged one on a locked-down host, is still judged) is enqueued first.
func (c *Collector) remember(info *source.Container) {
	c.mu.Lock()
	c.cache[info.ID] = info
	c.mu.Unlock()
}

func (c *Collector) cached(id string) *source.Container {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.cache[id]
}

// cache is the collector's container cache as the host sources see it
// (source.Containers, and the kernel sensor's sensor.Containers).
type cache struct{ c *Collector }

// Lookup implements source.Containers.
func (k cache) Lookup(id string) (*source.Container, bool) {
	ci := k.c.cached(id)
	return ci, ci != nil
}

// Container implements sensor.Containers.
func (k cache) Container(id string) (event.Container, bool) {
	if ci := k.c.cached(id); ci != nil {
		return *ci.ECS(), true
	}
	return event.Container{}, false
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
		return info.ECS()
	}
	if attrs != nil {
		return dockerevents.ContainerFromAttributes(id, attrs)
	}
	return &event.Container{ID: id}
}

// startWatch starts the watcher of a running container unless it runs.
func (c *Collector) startWatch(ctx context.Context, info *source.Container) {
	if _, ok := c.watchers[info.ID]; ok {
		return
	}
	wctx, cancel := context.WithCancel(ctx)
	c.watchers[info.ID] = cancel
	c.m.watched.Set(float64(len(c.watchers)))
	emit := func(e *event.Event) {
		if cur := c.cached(info.ID); cur != nil {
			e.Container = cur.ECS() // current name after a rename
		} else {
			e.Container = info.ECS()
		}
		c.queue.enqueue(e)
	}
	if c.cfg.monitored(info.Labels) {
		for _, src := range c.perContainer {
			c.wg.Go(func() {
				if err := src.Monitor(wctx, info, emit); err != nil && wctx.Err() == nil {
					c.log.Warn("container source stopped", "container_id", info.ID, "source", fmt.Sprintf("%T", src), "err", err)
				}
			})
		}
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
