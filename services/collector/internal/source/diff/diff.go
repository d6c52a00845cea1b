// Package diff is the file source of last resort and the reconciliation
// beside the event-driven ones: docker diff of each running container,
// compared with the previous look. With the kernel sensor it runs at a slow
// reconciliation interval (or not at all).
package diff

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/poll"
	"github.com/whalewatch/whalewatch/services/collector/internal/source"
)

// Config configures the file source.
type Config struct {
	// Interval between two looks when no event-driven file source runs; 0
	// disables the source.
	Interval time.Duration
	// ReconcileInterval replaces Interval beside an event-driven file
	// source (the kernel sensor, fanotify): docker diff then only
	// reconciles. 0, the default, chooses: beside the sensor no periodic
	// look at all (a first look at each container that predates it, and a
	// look whenever it lost records: see Beside), beside fanotify every
	// FanotifyReconcile (it misses a container's first moments).
	ReconcileInterval time.Duration
	// MaxChanges bounds the events of one look.
	MaxChanges int
}

// RegisterFlags registers the file source's flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.DurationVar(&c.Interval, "diff-interval", 30*time.Second, "how often each running container's filesystem changes (docker diff) are compared with the previous look, when docker diff is the file source (0 disables docker diff, reconciliation included)")
	fs.DurationVar(&c.ReconcileInterval, "diff-reconcile-interval", 0, "beside the kernel sensor or fanotify, how often docker diff reconciles each container (0: beside the sensor only once per container older than it and whenever it lost records; beside fanotify every 5m)")
	fs.IntVar(&c.MaxChanges, "diff-max-changes", 1000, "file events per container per look at most; the rest follow at later looks")
}

// Validate checks c.
func (c *Config) Validate() error {
	var errs []error
	for name, d := range map[string]time.Duration{"diff-interval": c.Interval, "diff-reconcile-interval": c.ReconcileInterval} {
		if d != 0 && d < 100*time.Millisecond {
			errs = append(errs, fmt.Errorf("%s must be 0 (disabled) or at least 100ms", name))
		}
	}
	if c.MaxChanges < 1 {
		errs = append(errs, errors.New("diff-max-changes must be positive"))
	}
	return errors.Join(errs...)
}

// FanotifyReconcile is the reconciliation interval beside fanotify when
// ReconcileInterval is 0.
const FanotifyReconcile = 5 * time.Minute

// firstLookSpread spreads the first looks of a reconciliation without a
// period over this long: a collector starting on a host with hundreds of
// containers does not ask the engine for all their diffs at once.
const firstLookSpread = 30 * time.Second

// sinceMargin covers the clock skew between the engine's StartedAt and the
// collector's clock.
const sinceMargin = 2 * time.Second

// Beside makes the source the reconciliation beside an event-driven file
// source; the zero Beside: docker diff is the file source.
type Beside struct {
	// Since is when the event-driven source began to see file changes
	// (zero: not yet). A container started after it gets no first look:
	// the source saw all its changes. nil: every container is looked at.
	Since func() time.Time
	// Wake, when set, makes every container look again at once when the
	// channel it returns is closed (a poll.Signal's C): the event-driven
	// source lost events.
	Wake func() <-chan struct{}
}

// API is the engine call of the source.
type API interface {
	ContainerDiff(ctx context.Context, id string) ([]container.FilesystemChange, error)
}

// Monitor asks the engine for a container's filesystem changes (docker
// diff: what its writable layer adds, changes and deletes against the
// image) every interval and publishes what changed since its previous look,
// one file event per path.
//
// The first look publishes every change the container already has: a binary
// dropped before the collector started (or in the first seconds of the
// container) is reported once rather than taken as the baseline. Later looks
// publish paths that are new in the diff, whose kind changed, or whose type,
// mode, size or modification time changed (a chmod +x after the write, a
// rewrite); a path added earlier that is no longer in the diff was deleted.
//
// File details come from the container's root as its init process sees it,
// <proc>/<pid>/root, opened as an os.Root: paths are resolved inside it and
// Lstat never follows a symlink (a path whose resolution would leave the
// root is simply not described). This needs the host's PID namespace and
// root; without them changes are still published, without file.size/mode.
//
// Bounds: at most maxChanges events per look; changes beyond it are not
// remembered, so they are published at later looks
// (whalewatch_collector_file_changes_overflow_total counts them); at most
// maxDiffTracked paths of a diff are considered.
type Monitor struct {
	docker     API
	host       string
	interval   time.Duration
	beside     Beside
	spread     time.Duration // firstLookSpread; tests shorten it
	maxChanges int
	procRoot   string
	log        *slog.Logger
	now        func() time.Time
	errors     prometheus.Counter
	overflow   prometheus.Counter
}

// New returns the file source looking every interval (Interval or
// ReconcileInterval of cfg, as the wiring chose; 0: only the first look and
// those beside.Wake asks for). errs counts failed calls.
func New(docker API, interval time.Duration, beside Beside, cfg Config, mounts source.HostMounts, host string, log *slog.Logger, errs prometheus.Counter, reg prometheus.Registerer) *Monitor {
	m := &Monitor{docker: docker, host: host, interval: interval, beside: beside, spread: firstLookSpread, maxChanges: cfg.MaxChanges, procRoot: mounts.Proc,
		log: log, now: time.Now, errors: errs,
		overflow: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "whalewatch_collector_file_changes_overflow_total",
			Help: "Filesystem changes not reported in a look because of -diff-max-changes (reported at a later look).",
		})}
	reg.MustRegister(m.overflow)
	return m
}

const maxDiffTracked = 100000

// fileState is what a look saw of one path.
type fileState struct {
	kind container.ChangeType
	info *fileInfo // nil: not readable (or deleted)
}

type fileInfo struct {
	typ   string // file, dir, symlink, other
	size  int64
	mode  fs.FileMode
	mtime time.Time
}

func (f *Monitor) Monitor(ctx context.Context, ctr *source.Container, emit source.Emit) error {
	log := f.log.With("container_id", ctr.ID)
	var seen map[string]fileState
	// A container younger than the event-driven source skips its first
	// look; a later look (after lost events) then reports all its changes
	// again, which is better than a baseline that hides a dropped binary.
	skip := false
	if f.beside.Since != nil {
		since := f.beside.Since()
		skip = !since.IsZero() && ctr.StartedAt.After(since.Add(sinceMargin))
	}
	if skip && f.interval == 0 && f.beside.Wake == nil {
		return nil // nothing will ever be looked at
	}
	phase := poll.Phase(ctr.ID, f.interval)
	if f.interval == 0 {
		phase = poll.Phase(ctr.ID, f.spread)
	}
	if skip {
		phase = 0
	}
	loop := poll.Loop{What: "docker diff", Interval: f.interval, Wake: f.beside.Wake, Phase: phase, Log: log, Failures: f.errors}
	return loop.Run(ctx, func(ctx context.Context) error {
		if skip {
			skip = false
			return nil
		}
		changes, err := f.diff(ctx, ctr.ID)
		if err != nil {
			return err
		}
		if len(changes) > maxDiffTracked {
			log.Warn("docker diff too long, looking at the first paths only", "paths", len(changes), "kept", maxDiffTracked)
			changes = changes[:maxDiffTracked]
		}
		seen = f.look(ctr, changes, seen, emit)
		return nil
	})
}

func (f *Monitor) diff(ctx context.Context, id string) ([]container.FilesystemChange, error) {
	ctx, cancel := context.WithTimeout(ctx, source.CallTimeout)
	defer cancel()
	return f.docker.ContainerDiff(ctx, id)
}

// look compares one diff with the previous look's state, emits the changes
// and returns the new state.
func (f *Monitor) look(ctr *source.Container, changes []container.FilesystemChange, seen map[string]fileState, emit source.Emit) map[string]fileState {
	var root *os.Root
	if ctr.InitPID > 0 {
		if r, err := os.OpenRoot(filepath.Join(f.procRoot, strconv.Itoa(ctr.InitPID), "root")); err == nil {
			root = r
			defer r.Close()
		}
	}
	now := f.now()
	next := make(map[string]fileState, len(changes))
	emitted, overflow := 0, 0
	report := func(path, kind string, st fileState) bool {
		if emitted >= f.maxChanges {
			overflow++
			return false
		}
		emitted++
		emit(fileEvent(f.host, ctr.ID, path, kind, st.info, now))
		return true
	}
	for _, ch := range changes {
		st := fileState{kind: ch.Kind}
		if ch.Kind != container.ChangeDelete && root != nil {
			st.info = lstatIn(root, ch.Path)
		}
		old, known := seen[ch.Path]
		var kind string
		switch {
		case !known || old.kind != st.kind:
			kind = changeKind(ch.Kind)
		case old.info != nil && st.info != nil && old.info.differs(st.info):
			kind = "changed"
		default:
			next[ch.Path] = old
			continue
		}
		if report(ch.Path, kind, st) {
			next[ch.Path] = st
		} else if known {
			next[ch.Path] = old
		}
	}
	for path, old := range seen {
		if _, still := next[path]; still || old.kind != container.ChangeAdd {
			continue
		}
		if !report(path, "deleted", fileState{kind: container.ChangeDelete}) {
			next[path] = old // report it at a later look
		}
	}
	if overflow > 0 {
		f.overflow.Add(float64(overflow))
		f.log.Warn("too many filesystem changes in one look, the rest follow at later looks",
			"container_id", ctr.ID, "reported", emitted, "deferred", overflow)
	}
	return next
}

func changeKind(k container.ChangeType) string {
	switch k {
	case container.ChangeAdd:
		return "added"
	case container.ChangeDelete:
		return "deleted"
	default:
		return "changed"
	}
}

func (a *fileInfo) differs(b *fileInfo) bool {
	if a.typ != b.typ || a.mode != b.mode {
		return true
	}
	// A directory's size and mtime change with every file created in it,
	// which is reported on its own.
	return a.typ != "dir" && (a.size != b.size || !a.mtime.Equal(b.mtime))
}

// lstatIn describes path (absolute in the container) inside root without
// following symlinks; nil when it cannot.
func lstatIn(root *os.Root, path string) *fileInfo {
	rel := strings.TrimLeft(path, "/")
	if rel == "" {
		return nil
	}
	fi, err := root.Lstat(rel)
	if err != nil {
		return nil
	}
	info := &fileInfo{size: fi.Size(), mode: fi.Mode(), mtime: fi.ModTime()}
	switch {
	case fi.Mode().IsRegular():
		info.typ = "file"
	case fi.IsDir():
		info.typ = "dir"
	case fi.Mode()&fs.ModeSymlink != 0:
		info.typ = "symlink"
	default:
		info.typ = "other"
	}
	return info
}

// fileEvent is one change as telemetry. Its id derives from the path, kind
// and what was read of the file, so a restarted collector's first look
// republishes an unchanged path once within JetStream's duplicate window.
func fileEvent(host, containerID, path, kind string, info *fileInfo, now time.Time) *event.Event {
	f := &event.File{Path: path}
	fc := &event.FileChange{Kind: kind}
	idParts := []string{host, "diff", containerID, path, kind}
	if info != nil {
		f.Type = info.typ
		f.Mode = source.UnixMode(info.mode)
		if info.typ == "file" {
			f.Size = info.size
			fc.Executable = info.mode&0o111 != 0
		}
		idParts = append(idParts, f.Mode, strconv.FormatInt(info.size, 10), strconv.FormatInt(info.mtime.UnixNano(), 10))
	}
	typ := map[string]string{"added": "creation", "changed": "change", "deleted": "deletion"}[kind]
	msg := "file " + kind + ": " + path
	if fc.Executable {
		msg += " (executable)"
	}
	return &event.Event{
		Timestamp: now.UTC(),
		Message:   msg,
		Event: event.Meta{
			ID:       event.DeriveID(idParts...),
			Kind:     event.KindEvent,
			Category: []string{"file"},
			Type:     []string{typ},
			Action:   "file-" + kind,
			Dataset:  event.TelemetryFile.Dataset(),
			Module:   event.Module,
			Created:  now.UTC(),
		},
		Host: event.Host{Name: host},
		File: f,
		Whalewatch: event.Whalewatch{
			SchemaVersion: event.SchemaVersion,
			Telemetry:     event.TelemetryFile,
			FileChange:    fc,
		},
	}
}

// Interval is how often the source looks.
func (f *Monitor) Interval() time.Duration { return f.interval }
