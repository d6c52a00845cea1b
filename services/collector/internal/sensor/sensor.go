// Package sensor is the collector's kernel sensor: eBPF programs on
// tracepoints report what processes in containers do (exec, fork, exit, file
// changes, connections and TCP states, privileged system calls, refused ones
// included) through one ring buffer, and Run turns their records into
// telemetry of the contract in pkg/event.
//
// The programs (bpf/sensor.bpf.c) filter in the kernel: only processes whose
// memory cgroup is a container's report anything. Their compiled object is
// committed (sensor_bpfel.o, embedded by sensor_bpfel.go); `make generate`
// rebuilds it, see README.md.
package sensor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/services/collector/internal/proc"
)

// ErrUnsupported is wrapped by Open's error when this kernel or these
// privileges cannot run the sensor (not root, no BTF, program refused by the
// verifier, tracepoint missing); the collector then falls back to the process
// connector (plus fanotify) and then to docker top.
var ErrUnsupported = errors.New("kernel sensor unsupported")

// Containers resolves a container id (64 hex, as the kernel sensor reads it
// from the memory cgroup's kernfs node name) to what the collector knows of
// it. ok is false while the container is not known yet (the sensor then waits
// up to a short bound, like the process connector does, then publishes with
// the id alone).
type Containers interface {
	Container(id string) (c event.Container, ok bool)
}

// requiredPrograms must attach, or Open fails: without them the sensor
// would silently see less than the process connector it replaces.
var requiredPrograms = map[string]bool{
	"tp_exec": true, "tp_exit": true, "rtp_fork": true,
	"enter_openat": true, "exit_openat": true,
	"enter_connect": true, "exit_connect": true,
}

// Sensor is the loaded and attached kernel sensor.
type Sensor struct {
	cfg        Config
	host       string
	containers Containers
	log        *slog.Logger
	coll       *ebpf.Collection
	links      []link.Link
	reader     *ringbuf.Reader
	m          *metrics
	clock      clock
	attached   []string
	missing    []string
}

// Open loads and attaches the programs. host is the collector's host name
// (host.name of every event).
func Open(cfg Config, host string, containers Containers, log *slog.Logger, reg prometheus.Registerer) (*Sensor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: not root", ErrUnsupported)
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		return nil, fmt.Errorf("%w: no kernel BTF: %v", ErrUnsupported, err)
	}
	if err := ensureTracefs(log); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnsupported, err)
	}
	_ = rlimit.RemoveMemlock() // kernels before 5.11 account BPF memory to RLIMIT_MEMLOCK
	spec, err := loadSensor()
	if err != nil {
		return nil, fmt.Errorf("loading the sensor object: %w", err)
	}
	spec.Maps["events"].MaxEntries = uint32(cfg.RingBufferBytes)
	if err := spec.Variables["wake_bytes"].Set(uint64(cfg.RingBufferBytes / 8)); err != nil {
		return nil, fmt.Errorf("setting the wakeup threshold: %w", err)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("%w: verifier: %v", ErrUnsupported, ve)
		}
		return nil, fmt.Errorf("%w: loading programs: %v", ErrUnsupported, err)
	}
	s := &Sensor{cfg: cfg, host: host, containers: containers, log: log, coll: coll, clock: newClock()}
	if err := s.setSensitive(cfg.SensitivePaths); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.attach(spec); err != nil {
		s.Close()
		return nil, err
	}
	if s.reader, err = ringbuf.NewReader(coll.Maps["events"]); err != nil {
		s.Close()
		return nil, fmt.Errorf("%w: ring buffer reader: %v", ErrUnsupported, err)
	}
	s.m = newMetrics(coll.Maps["drops"], len(s.attached))
	if reg != nil {
		if err := s.m.register(reg); err != nil {
			s.Close()
			return nil, fmt.Errorf("registering sensor metrics: %w", err)
		}
	}
	log.Info("kernel sensor attached", "programs", len(s.attached), "missing_tracepoints", strings.Join(s.missing, ","),
		"ring_buffer_bytes", cfg.RingBufferBytes)
	return s, nil
}

// ensureTracefs mounts tracefs at its usual place when nothing is mounted
// there: per-syscall tracepoints are found through it.
func ensureTracefs(log *slog.Logger) error {
	for _, p := range []string{"/sys/kernel/tracing", "/sys/kernel/debug/tracing"} {
		var st unix.Statfs_t
		if unix.Statfs(p, &st) == nil && (st.Type == unix.TRACEFS_MAGIC || st.Type == unix.DEBUGFS_MAGIC) {
			if _, err := os.Stat(p + "/events"); err == nil {
				return nil
			}
		}
	}
	if err := unix.Mount("tracefs", "/sys/kernel/tracing", "tracefs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mounting tracefs on /sys/kernel/tracing: %w", err)
	}
	log.Info("mounted tracefs on /sys/kernel/tracing for the kernel sensor")
	return nil
}

// prefixKey is struct prefix_key of sensor.bpf.c (an LPM trie key).
type prefixKey struct {
	PrefixLen uint32
	Data      [maxPrefix]byte
}

func (s *Sensor) setSensitive(paths []string) error {
	m := s.coll.Maps["sensitive"]
	for _, p := range paths {
		var k prefixKey
		k.PrefixLen = uint32(8 * len(p))
		copy(k.Data[:], p)
		if err := m.Put(&k, uint8(1)); err != nil {
			return fmt.Errorf("sensitive path %q: %w", p, err)
		}
	}
	return nil
}

// attach attaches every program to the tracepoint its section names. A
// tracepoint this kernel lacks (openat2 on older kernels, init_module
// without module support) is skipped; a required one fails Open.
func (s *Sensor) attach(spec *ebpf.CollectionSpec) error {
	for name, ps := range spec.Programs {
		prog := s.coll.Programs[name]
		var (
			l   link.Link
			err error
		)
		switch sec := ps.SectionName; {
		case strings.HasPrefix(sec, "tracepoint/"):
			group, tp, _ := strings.Cut(strings.TrimPrefix(sec, "tracepoint/"), "/")
			l, err = link.Tracepoint(group, tp, prog, nil)
		case strings.HasPrefix(sec, "raw_tracepoint/"):
			l, err = link.AttachRawTracepoint(link.RawTracepointOptions{Name: strings.TrimPrefix(sec, "raw_tracepoint/"), Program: prog})
		default:
			return fmt.Errorf("program %s: unknown section %q", name, sec)
		}
		if err != nil {
			if !requiredPrograms[name] {
				// Absent (openat2 on older kernels, init_module without
				// module support) or refused: the sensor runs without it
				// and says so.
				s.missing = append(s.missing, strings.TrimPrefix(ps.SectionName, "tracepoint/syscalls/"))
				level := slog.LevelWarn
				if errors.Is(err, os.ErrNotExist) {
					level = slog.LevelDebug // this kernel has no such call
				}
				s.log.Log(context.Background(), level, "kernel sensor: tracepoint not attached", "program", name, "err", err)
				continue
			}
			return fmt.Errorf("%w: attaching %s (%s): %v", ErrUnsupported, name, ps.SectionName, err)
		}
		s.links = append(s.links, l)
		s.attached = append(s.attached, name)
	}
	return nil
}

// Mode is "ebpf": whalewatch.source of its events and the mode label of the
// collector's source-mode metric.
func (s *Sensor) Mode() string { return Mode }

// Close detaches every program and frees the maps. Safe after Run returned.
func (s *Sensor) Close() error {
	var errs []error
	if s.reader != nil {
		errs = append(errs, s.reader.Close())
	}
	for _, l := range s.links {
		errs = append(errs, l.Close())
	}
	s.links = nil
	if s.coll != nil {
		s.coll.Close()
		s.coll = nil
	}
	return errors.Join(errs...)
}

// pollEvery is how often the ring buffer is read while records are coming
// in (the kernel wakes the reader for the first record after a quiet spell
// and when an eighth of the ring is waiting, not for each record), and how
// often events waiting for their container's metadata are looked at.
// idlePoll is the reader's timer when nothing came in since the last poll.
const (
	pollEvery = 25 * time.Millisecond
	idlePoll  = time.Second
)

// maxPending bounds the events waiting for container metadata; beyond it an
// event is published at once with the container id alone.
const maxPending = 10000

// Run reads the ring buffer until ctx ends and emits telemetry built on the
// contract in pkg/event (schema 1.2). Only processes in containers are
// reported (filtered in the kernel). emit must not block. Run returns nil
// when ctx ends.
func (s *Sensor) Run(ctx context.Context, emit func(*event.Event)) error {
	stop := context.AfterFunc(ctx, func() { s.reader.SetDeadline(time.Now()) })
	defer stop()
	reader := proc.NewReader("/proc")
	hashes := newHashCache("/proc")
	hashes.hashed = s.m.hashed.Inc
	b := newBuilder(s.host, s.clock, hashes, func(pid int) string {
		id, _ := reader.ContainerID(pid)
		return id
	})
	var (
		rec       ringbuf.Record
		r         record
		lastSweep = time.Now()
		deadline  time.Time
		busy      bool   // records came in during the last poll window
		n, mark   uint64 // records read; n when the deadline was set
	)
	out := func(e *event.Event) {
		e.Event.Created = time.Now().UTC()
		e.Bound()
		s.m.latency.Observe(e.Event.Created.Sub(e.Timestamp).Seconds())
		s.m.events.WithLabelValues(string(e.Whalewatch.Telemetry)).Inc()
		emit(e)
	}
	q := newEnricher(s.containers, s.cfg.EnrichWait, maxPending)
	q.waited = s.m.enrichWaits.Inc
	for {
		// Poll soon while records come in (the kernel does not wake the
		// reader for each), rarely when idle; shorten a pending idle
		// deadline as soon as a record arrives.
		want := idlePoll
		if busy || len(q.pending) > 0 {
			want = pollEvery
		}
		if t := time.Now(); deadline.IsZero() || !t.Before(deadline) || t.Add(want).Before(deadline) {
			deadline = t.Add(want)
			s.reader.SetDeadline(deadline)
			mark = n
		}
		err := s.reader.ReadInto(&rec)
		if ctx.Err() != nil {
			q.drain(out)
			return nil
		}
		now := time.Now()
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			// Idle only after a whole poll window without a record: then
			// the kernel's next record finds an empty ring and wakes us.
			busy = n != mark
		case errors.Is(err, ringbuf.ErrClosed):
			return nil
		case err != nil:
			return fmt.Errorf("reading the sensor ring buffer: %w", err)
		default:
			busy = true
			n++
			if derr := decode(rec.RawSample, &r); derr != nil {
				s.m.decodeErrors.Inc()
				s.log.Debug("sensor record skipped", "err", derr)
				break
			}
			s.m.records.WithLabelValues(kindNames[r.kind]).Inc()
			e := b.build(&r)
			if e == nil {
				break
			}
			q.add(e, now, out)
		}
		q.flush(now, pollEvery/2, out)
		if now.Sub(lastSweep) > 10*time.Second {
			b.sweep(now)
			// The wall clock may have been stepped (NTP).
			s.clock = newClock()
			b.clock = s.clock
			lastSweep = now
		}
	}
}

var kindNames = map[uint32]string{kindExec: "exec", kindFork: "fork", kindExit: "exit", kindSyscall: "syscall", kindSockState: "tcp_state"}
