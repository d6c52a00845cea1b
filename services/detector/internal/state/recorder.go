package state

import (
	"container/list"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// Scorer is the anomaly model as the Recorder uses it: it scores one feature
// vector of an image's container (order: FeatureNames) and names the
// features that made it unusual. It must be safe for concurrent use.
type Scorer interface {
	Observe(image string, features []float64) (score float64, top []string)
}

// FeatureNames is the order of the vector passed to Scorer (the order of
// internal/anomaly's Vector).
var FeatureNames = []string{
	"cpu_percent", "memory_bytes", "net_rx_bytes_per_sec", "net_tx_bytes_per_sec",
	"process_count", "connection_count", "new_process_rate",
}

// Recorder is the detector's Tracker: per-container windows in memory, and
// per-image baselines kept in step with NATS KV by SyncBaselines.
//
// Windows are measured in event time (@timestamp, never going backwards per
// container), so a backlog replayed after an outage does not look like a
// burst; idle expiry and baseline learning use the wall clock.
//
// Snapshot fields are set only on the events they are about: scan counters
// on outbound network events, CPU and traffic on resource samples, the drop
// on the exec, a New* flag on the event that showed the new behaviour. So a
// rule on them fires once per occurrence, not on every later event.
type Recorder struct {
	cfg    Config
	now    func() time.Time
	scorer Scorer

	mu         sync.Mutex
	containers map[string]*list.Element // of *container
	lru        *list.List               // front: most recently seen
	images     map[string]*imageState
	lastSweep  time.Time
	// hostIncidents are the incidents of host-scoped threats (incident.go).
	hostIncidents map[string]*incident

	forgotten *prometheus.CounterVec
	kvWrites  *prometheus.CounterVec
}

// Option configures a Recorder.
type Option func(*Recorder)

// WithClock makes the Recorder read the wall clock from now (tests).
func WithClock(now func() time.Time) Option { return func(r *Recorder) { r.now = now } }

// WithScorer sets the anomaly model; without one AnomalyScore stays 0.
func WithScorer(s Scorer) Option { return func(r *Recorder) { r.scorer = s } }

// NewRecorder returns an empty Recorder whose metrics are registered on reg.
func NewRecorder(cfg Config, reg prometheus.Registerer, opts ...Option) *Recorder {
	r := &Recorder{
		cfg:        cfg,
		now:        time.Now,
		containers: map[string]*list.Element{},
		lru:        list.New(),
		images:     map[string]*imageState{},
		forgotten: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whalewatch_detector_state_forgotten_total",
			Help: "Containers whose windows were dropped, by reason (died, idle, evicted, moved).",
		}, []string{"reason"}),
		kvWrites: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whalewatch_detector_baseline_writes_total",
			Help: "Baseline writes to NATS KV, by outcome (stored, conflict, error).",
		}, []string{"outcome"}),
	}
	for _, o := range opts {
		o(r)
	}
	reg.MustRegister(r.forgotten, r.kvWrites,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "whalewatch_detector_state_containers",
			Help: "Containers whose windows are kept in memory.",
		}, func() float64 { return float64(r.Containers()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "whalewatch_detector_baseline_images",
			Help: "Images with a behaviour baseline known to this replica.",
		}, func() float64 {
			r.mu.Lock()
			defer r.mu.Unlock()
			return float64(len(r.images))
		}))
	return r
}

// Containers is the number of containers tracked.
func (r *Recorder) Containers() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.containers)
}

type conn struct {
	at   time.Time
	host string
	port int
}

type container struct {
	id, image string
	seen      time.Time // wall clock
	last      time.Time // event-time high-water mark

	conns    []conn // scan window, oldest first
	ports    map[int]int
	hosts    map[string]int
	attempts int
	open     map[string]struct{} // established/syn_sent sockets
	dropped  map[string]time.Time

	cpuHighSince time.Time
	cpuLowSince  time.Time // start of a dip below the threshold during a run
	resAt        time.Time
	rx, tx       uint64
	rxAvg, txAvg float64
	rateSamples  int
	procStarts   int

	behaviour
	incident *incident
}

// Observe updates the state with e and returns the snapshot for it.
func (r *Recorder) Observe(e *event.Event) Snapshot {
	if e == nil || e.Event.Kind != event.KindEvent || e.Container == nil || e.Container.ID == "" {
		return Snapshot{}
	}
	s, image, vec := r.observe(e)
	if vec != nil && r.scorer != nil && image != "" {
		s.AnomalyScore, s.AnomalyFeatures = r.scorer.Observe(image, vec)
	}
	return s
}

func (r *Recorder) observe(e *event.Event) (s Snapshot, image string, vec []float64) {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sweep(now)
	id := e.Container.ID
	if e.Whalewatch.Telemetry == event.TelemetryLifecycle && (e.Event.Action == "die" || e.Event.Action == "destroy") {
		r.forget(id, "died")
		return Snapshot{}, "", nil
	}
	c := r.container(id, ImageKey(e.Container), now)
	ts := e.Timestamp
	if ts.IsZero() || ts.Before(c.last) {
		ts = c.last
	}
	if ts.IsZero() {
		ts = now
	}
	c.last = ts
	img := r.image(c.image, now)
	learning := img != nil && img.stored.Learning(now)
	s.BaselineLearning = learning

	switch e.Whalewatch.Telemetry {
	case event.TelemetryProcess:
		if slices.Contains(e.Event.Type, "end") {
			c.processEnded(e)
		} else {
			r.process(c, img, learning, e, ts, &s)
		}
	case event.TelemetryLifecycle:
		if e.Process != nil && strings.HasPrefix(e.Event.Action, "exec_start") {
			r.process(c, img, learning, e, ts, &s)
		}
	case event.TelemetryConfig:
		r.config(c, e)
	case event.TelemetryNetwork:
		r.network(c, img, learning, e, ts, &s)
	case event.TelemetryFile:
		r.file(c, e, ts)
	case event.TelemetryResource:
		vec = r.resource(c, img, learning, e, ts, &s)
	}
	r.evidenceOf(c, e)
	return s, c.image, vec
}

// container returns id's state, creating it (and evicting the least
// recently seen beyond MaxContainers) as needed.
func (r *Recorder) container(id, image string, now time.Time) *container {
	if el, ok := r.containers[id]; ok {
		r.lru.MoveToFront(el)
		c := el.Value.(*container)
		c.seen = now
		if image != "" {
			c.image = image
		}
		return c
	}
	for len(r.containers) >= r.cfg.MaxContainers {
		r.forget(r.lru.Back().Value.(*container).id, "evicted")
	}
	c := &container{id: id, image: image, seen: now, ports: map[int]int{}, hosts: map[string]int{},
		open: map[string]struct{}{}, dropped: map[string]time.Time{}}
	r.containers[id] = r.lru.PushFront(c)
	return c
}

func (r *Recorder) forget(id, reason string) {
	if el, ok := r.containers[id]; ok {
		r.lru.Remove(el)
		delete(r.containers, id)
		r.forgotten.WithLabelValues(reason).Inc()
	}
}

// Forget drops the windows of the containers for which drop is true (a
// partition that moved to another replica); reason labels the metric.
func (r *Recorder) Forget(drop func(containerID string) bool, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id := range r.containers {
		if drop(id) {
			r.forget(id, reason)
		}
	}
}

// sweep forgets idle containers, at most every quarter of IdleTimeout.
func (r *Recorder) sweep(now time.Time) {
	if now.Sub(r.lastSweep) < r.cfg.IdleTimeout/4 {
		return
	}
	r.lastSweep = now
	for el := r.lru.Back(); el != nil; el = r.lru.Back() {
		c := el.Value.(*container)
		if now.Sub(c.seen) < r.cfg.IdleTimeout {
			return
		}
		r.forget(c.id, "idle")
	}
}

func (r *Recorder) process(c *container, img *imageState, learning bool, e *event.Event, ts time.Time, s *Snapshot) {
	p := e.Process
	if p == nil {
		return
	}
	c.procStarts++
	path := p.Executable
	if path == "" && len(p.Args) > 0 && strings.HasPrefix(p.Args[0], "/") {
		path = p.Args[0]
	}
	if at, ok := c.dropped[path]; ok && path != "" && ts.Sub(at) <= r.cfg.DropWindow {
		s.ExecOfDroppedFile, s.DroppedPath = true, path
	}
	exe := path
	if exe == "" {
		exe = p.Name
	}
	defer r.behaviourOfExec(c, e, exe, s)
	if img == nil || exe == "" {
		return
	}
	exe = event.Truncate(exe, 256)
	s.NewProcess = img.see(img.sets.exe, img.pending.exe, exe, learning, r.cfg.BaselineMaxEntries)
	if pp := p.Parent; pp != nil {
		parent := pp.Executable
		if parent == "" {
			parent = pp.Name
		}
		if parent != "" {
			pc := event.Truncate(parent, 256) + " -> " + exe
			s.NewParentChild = img.see(img.sets.pc, img.pending.pc, pc, learning, r.cfg.BaselineMaxEntries)
		}
	}
}

func (r *Recorder) network(c *container, img *imageState, learning bool, e *event.Event, ts time.Time, s *Snapshot) {
	sock := e.Whalewatch.Socket
	if sock == nil {
		return
	}
	transport := "tcp"
	if e.Network != nil && e.Network.Transport != "" {
		transport = event.Truncate(e.Network.Transport, 16)
	}
	key := socketKey(e)
	switch sock.State {
	case "listen", "accept":
		// A listener is the image's known service when its port was seen
		// while the baseline learned. Without a baseline nothing is known.
		known := false
		if img != nil && e.Source != nil && e.Source.Port > 0 {
			s.NewListenPort = img.see(img.sets.listen, img.pending.listen, transport+"/"+strconv.Itoa(e.Source.Port), learning, r.cfg.BaselineMaxEntries)
			known = !s.NewListenPort
		}
		if sock.State == "accept" {
			s.NewListenPort = false // the listen said it
		}
		c.listener(e, known)
	case "closed":
		delete(c.open, key)
	case "established", "syn_sent", "connect":
		// connect is the system call, seen by the kernel sensor once per
		// attempt, refused ones included: each counts. The socket table's
		// states may show one connection twice (syn_sent, then established).
		if sock.State != "connect" {
			if _, ok := c.open[key]; ok {
				return
			}
			if len(c.open) < r.cfg.MaxWindowEntries {
				c.open[key] = struct{}{}
			}
		}
		if e.Network != nil && e.Network.Direction == "ingress" || e.Destination == nil {
			return
		}
		host := e.Destination.IP
		if host == "" {
			host = e.Destination.Address
		}
		host = event.Truncate(host, 256)
		r.expireConns(c, ts)
		if len(c.conns) >= r.cfg.MaxWindowEntries {
			r.dropConn(c)
		}
		c.conns = append(c.conns, conn{at: ts, host: host, port: e.Destination.Port})
		c.ports[e.Destination.Port]++
		c.hosts[host]++
		s.DistinctDestPorts, s.DistinctDestHosts, s.ConnAttempts = len(c.ports), len(c.hosts), len(c.conns)
		if img != nil && host != "" {
			s.NewDestination = img.see(img.sets.dest, img.pending.dest, net.JoinHostPort(host, strconv.Itoa(e.Destination.Port)), learning, r.cfg.BaselineMaxEntries)
		}
	}
}

func socketKey(e *event.Event) string {
	var b strings.Builder
	if e.Source != nil {
		b.WriteString(strconv.Itoa(e.Source.Port))
	}
	b.WriteByte('|')
	if d := e.Destination; d != nil {
		b.WriteString(event.Truncate(d.IP+d.Address, 256))
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(d.Port))
	}
	return b.String()
}

func (r *Recorder) expireConns(c *container, ts time.Time) {
	for len(c.conns) > 0 && ts.Sub(c.conns[0].at) > r.cfg.ScanWindow {
		r.dropConn(c)
	}
}

func (r *Recorder) dropConn(c *container) {
	old := c.conns[0]
	c.conns = c.conns[1:]
	if c.ports[old.port]--; c.ports[old.port] <= 0 {
		delete(c.ports, old.port)
	}
	if c.hosts[old.host]--; c.hosts[old.host] <= 0 {
		delete(c.hosts, old.host)
	}
}

func (r *Recorder) file(c *container, e *event.Event, ts time.Time) {
	fc, f := e.Whalewatch.FileChange, e.File
	if fc == nil || f == nil || f.Path == "" || e.Event.Outcome == "failure" {
		return
	}
	kind, path := fc.Kind, f.Path
	switch fc.Operation { // the kernel sensor says what happened, docker diff only the result
	case "write", "create", "truncate", "chmod", "link", "symlink":
		kind = "changed"
	case "rename":
		kind = "changed"
		if f.TargetPath != "" {
			delete(c.dropped, path)
			path = f.TargetPath
		}
	case "unlink":
		kind = "deleted"
	case "read":
		return
	}
	switch kind {
	case "deleted":
		delete(c.dropped, path)
	case "added", "changed":
		// Every added or changed non-directory counts: the execute bit may
		// be unreadable or set after the diff, and only an exec of the
		// exact path matches.
		if f.Type == "dir" {
			return
		}
		if _, ok := c.dropped[path]; !ok && len(c.dropped) >= r.cfg.MaxWindowEntries {
			oldest, at := "", time.Time{}
			for p, t := range c.dropped {
				if oldest == "" || t.Before(at) {
					oldest, at = p, t
				}
			}
			delete(c.dropped, oldest)
		}
		c.dropped[event.Truncate(path, 4096)] = ts
	}
}

func (r *Recorder) resource(c *container, img *imageState, learning bool, e *event.Event, ts time.Time, s *Snapshot) []float64 {
	res := e.Whalewatch.Resource
	if res == nil {
		return nil
	}
	pct := res.CPUPercent
	if res.CPULimitPercent > 0 {
		pct = res.CPULimitPercent
	}
	interval := time.Duration(res.IntervalSeconds * float64(time.Second))
	if !c.resAt.IsZero() && ts.Sub(c.resAt) > cpuGap(res.IntervalSeconds) {
		c.cpuHighSince, c.cpuLowSince = time.Time{}, time.Time{} // samples were lost: the run is not known to have lasted
	}
	if pct >= r.cfg.CPUSustainedPercent {
		if c.cpuHighSince.IsZero() {
			c.cpuHighSince = ts.Add(-interval)
		}
		c.cpuLowSince = time.Time{}
		s.CPUHighSeconds = ts.Sub(c.cpuHighSince).Seconds()
		s.CPUTopProcess, s.CPUTopProcessNew = c.topProcess(e)
	} else if !c.cpuHighSince.IsZero() {
		// A dip shorter than cpuDip does not end a run: a process held
		// to its CPU limit on a busy host, or sampled over a short
		// interval, reads below the threshold now and then.
		if c.cpuLowSince.IsZero() {
			c.cpuLowSince = ts.Add(-interval)
		}
		if ts.Sub(c.cpuLowSince) > cpuDip {
			c.cpuHighSince, c.cpuLowSince = time.Time{}, time.Time{}
		}
	}
	if img != nil {
		if learning {
			img.pending.cpuSamples++
			img.pending.cpuSum += res.CPUPercent
		}
		s.CPUBaselinePercent = img.stored.CPUMean()
	}

	var rxRate, txRate, procRate float64
	if !c.resAt.IsZero() && ts.After(c.resAt) && res.NetRxBytes >= c.rx && res.NetTxBytes >= c.tx {
		dt := ts.Sub(c.resAt).Seconds()
		rxRate, txRate = float64(res.NetRxBytes-c.rx)/dt, float64(res.NetTxBytes-c.tx)/dt
		procRate = float64(c.procStarts) / dt
		s.RxBytesPerSec, s.TxBytesPerSec = rxRate, txRate
		if c.rateSamples >= 3 {
			spike := func(rate, avg float64) bool {
				return rate >= r.cfg.SpikeMinBytes && rate > r.cfg.SpikeFactor*avg
			}
			s.TrafficSpike = spike(rxRate, c.rxAvg) || spike(txRate, c.txAvg)
		}
		const alpha = 0.2
		if c.rateSamples == 0 {
			c.rxAvg, c.txAvg = rxRate, txRate
		} else {
			c.rxAvg += alpha * (rxRate - c.rxAvg)
			c.txAvg += alpha * (txRate - c.txAvg)
		}
		c.rateSamples++
	}
	c.resAt, c.rx, c.tx, c.procStarts = ts, res.NetRxBytes, res.NetTxBytes, 0
	return []float64{res.CPUPercent, float64(res.MemoryBytes), rxRate, txRate, float64(res.PIDs), float64(len(c.open)), procRate}
}

// ContainerWindow is what the Recorder holds about one container, for tests
// and debugging.
type ContainerWindow struct {
	Image             string
	ConnAttempts      int
	DistinctDestPorts int
	Dropped           int
}

// Window returns what is held about container id, and whether anything is.
func (r *Recorder) Window(id string) (ContainerWindow, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	el, ok := r.containers[id]
	if !ok {
		return ContainerWindow{}, false
	}
	c := el.Value.(*container)
	return ContainerWindow{Image: c.image, ConnAttempts: len(c.conns), DistinctDestPorts: len(c.ports), Dropped: len(c.dropped)}, true
}
