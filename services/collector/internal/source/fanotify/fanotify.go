// Package fanotify is the file source beside the process connector (the
// middle of the fallback chain): one fanotify group marks the whole
// filesystem that holds the engine's data root (FAN_MARK_FILESYSTEM: with
// the vfs storage driver a container's root is a plain directory there, not
// a mount) and reports, with the directory's file handle and the entry's
// name (FAN_REPORT_DFID_NAME), every create, close after writing, delete,
// move and attribute change. Events under a watched container's writable directory
// become file telemetry within a flush period (100 ms); the rest of the
// host's file activity is rejected after one map lookup per directory.
//
// It is also a source.PerContainer: Monitor registers a running container's
// writable directory for as long as it runs.
package fanotify

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/services/collector/internal/source"
)

// Mode is whalewatch.source of its events and its source-mode label.
const Mode = "fanotify"

const (
	flushEvery = 100 * time.Millisecond
	maxDirs    = 1 << 16 // cached directory handles; the cache is reset beyond
	maxPending = 1 << 14 // changes waiting for a flush; beyond, dropped and counted
)

// Layout locates a container's writable directory on the host.
type Layout struct {
	DataRoot string // the engine's data root (/var/lib/docker)
	Driver   string // the storage driver (vfs, overlay2, ...)
}

// dir returns the host directory holding ctr's writable layer: overlay2's
// UpperDir from inspect, else (vfs and the like) <root>/<driver>/dir/<mount
// id> from the layer store.
func (l Layout) dir(ctr *source.Container) (string, error) {
	if ctr.UpperDir != "" {
		return ctr.UpperDir, nil
	}
	b, err := os.ReadFile(filepath.Join(l.DataRoot, "image", l.Driver, "layerdb", "mounts", ctr.ID, "mount-id"))
	if err != nil {
		return "", fmt.Errorf("container %s's layer: %w", ctr.ID, err)
	}
	id := strings.TrimSpace(string(b))
	if id == "" || strings.ContainsAny(id, "/.") {
		return "", fmt.Errorf("container %s's layer: bad mount id %q", ctr.ID, id)
	}
	return filepath.Join(l.DataRoot, l.Driver, "dir", id), nil
}

// Watcher is the fanotify file source.
type Watcher struct {
	layout Layout
	host   string
	log    *slog.Logger
	f      *os.File // the fanotify group, non-blocking
	fd     int
	mount  int // a descriptor on the filesystem, for open_by_handle_at
	// resolve turns a directory handle into its host path.
	resolve func(htype int32, handle []byte) (string, error)
	m       metrics

	mu    sync.Mutex
	key   []byte                       // scratch for the directory cache's key
	roots map[string]*source.Container // by host directory (with trailing /)
	ctrs  map[string]*source.Container // by id
	dirs  map[string]string            // directory handle → host path (renamed directories keep their old path)
	base  string                       // <data root>/<driver>/: every container's directory is below it
	pend  map[change]bool              // what order holds, for coalescing
	order []pending                    // in the order the kernel reported them
}

type pending struct {
	c  change
	at time.Time
}

type dirInfo struct {
	container string // "" : not in a watched container
	path      string // host path of the directory
	inner     string // its path inside the container
}

type change struct {
	container, hostPath, path string
	op                        string
}

type metrics struct {
	events  *prometheus.CounterVec // by result: container, host, stale, overflow, dropped
	emitted prometheus.Counter
	// The hot path's counters, bound once (WithLabelValues hashes).
	container, host, stale, overflow, dropped prometheus.Counter
}

// Probe tells whether a fanotify group with FAN_REPORT_DFID_NAME can mark
// the filesystem of dataRoot here (root: CAP_SYS_ADMIN; kernel 5.9 or later).
func Probe(dataRoot string) error {
	fd, err := open(dataRoot)
	if err != nil {
		return err
	}
	return unixClose(fd)
}

// New opens the group on the filesystem of layout.DataRoot.
func New(layout Layout, host string, log *slog.Logger, reg prometheus.Registerer) (*Watcher, error) {
	fd, err := open(layout.DataRoot)
	if err != nil {
		return nil, err
	}
	mount, err := openDir(layout.DataRoot)
	if err != nil {
		_ = unixClose(fd)
		return nil, fmt.Errorf("opening %s: %w", layout.DataRoot, err)
	}
	w := newWatcher(layout, host, log, reg)
	w.f, w.fd, w.mount = os.NewFile(uintptr(fd), "fanotify"), fd, mount
	w.resolve = func(htype int32, handle []byte) (string, error) { return resolve(mount, htype, handle) }
	return w, nil
}

func newWatcher(layout Layout, host string, log *slog.Logger, reg prometheus.Registerer) *Watcher {
	w := &Watcher{base: strings.TrimSuffix(filepath.Join(layout.DataRoot, layout.Driver), "/") + "/", layout: layout, host: host, log: log.With("file_source", Mode),
		roots: map[string]*source.Container{}, ctrs: map[string]*source.Container{}, dirs: map[string]string{}, pend: map[change]bool{}}
	w.m.events = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "whalewatch_collector_fanotify_events_total",
		Help: "fanotify events read, by result: container (under a watched container), host (elsewhere on the filesystem), stale (directory gone before it was resolved), overflow (the kernel's queue overflowed), dropped (too many changes pending).",
	}, []string{"result"})
	w.m.emitted = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "whalewatch_collector_fanotify_changes_total",
		Help: "File changes published by the fanotify source (after coalescing).",
	})
	reg.MustRegister(w.m.events, w.m.emitted)
	w.m.container, w.m.host, w.m.stale = w.m.events.WithLabelValues("container"), w.m.events.WithLabelValues("host"), w.m.events.WithLabelValues("stale")
	w.m.overflow, w.m.dropped = w.m.events.WithLabelValues("overflow"), w.m.events.WithLabelValues("dropped")
	return w
}

// Close releases the group. Call it after Run returned.
func (w *Watcher) Close() error {
	_ = unixClose(w.mount)
	return w.f.Close()
}

// Monitor registers ctr's writable directory until ctx ends.
func (w *Watcher) Monitor(ctx context.Context, ctr *source.Container, _ source.Emit) error {
	dir, err := w.layout.dir(ctr)
	if err != nil {
		return err
	}
	dir = strings.TrimSuffix(dir, "/") + "/"
	w.mu.Lock()
	w.roots[dir] = ctr
	w.ctrs[ctr.ID] = ctr
	w.mu.Unlock()
	<-ctx.Done()
	w.mu.Lock()
	delete(w.roots, dir)
	if w.ctrs[ctr.ID] == ctr {
		delete(w.ctrs, ctr.ID)
	}
	w.mu.Unlock()
	return nil
}

// Run reads the group until ctx ends, publishing the coalesced changes
// every flush period.
func (w *Watcher) Run(ctx context.Context, emit source.Emit) error {
	done := make(chan error, 1)
	go func() { done <- w.read() }()
	tick := time.NewTicker(flushEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			_ = w.f.SetReadDeadline(time.Now()) // ends read
			<-done
			w.flush(emit)
			return nil
		case err := <-done:
			return fmt.Errorf("reading fanotify events: %w", err)
		case <-tick.C:
			w.flush(emit)
		}
	}
}

func (w *Watcher) read() error {
	buf := make([]byte, 64<<10)
	for {
		n, err := w.f.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil
		}
		if err != nil {
			return err
		}
		w.parse(buf[:n])
	}
}

// parse reads a buffer of events: each a fanotify_event_metadata followed by
// info records; the DFID_NAME record holds fsid, file handle and name.
func (w *Watcher) parse(b []byte) {
	ne := binary.NativeEndian
	for len(b) >= metaLen {
		l := int(ne.Uint32(b[0:4]))
		if l < metaLen || l > len(b) {
			return
		}
		ev, rest := b[:l], b[l:]
		b = rest
		mask := ne.Uint64(ev[8:16])
		if fd := int32(ne.Uint32(ev[16:20])); fd >= 0 && w.fd > 0 {
			_ = unixClose(int(fd)) // not sent with FAN_REPORT_DFID_NAME; never leak one
		}
		if mask&qOverflow != 0 {
			w.m.overflow.Inc()
			continue
		}
		ml := int(ne.Uint16(ev[6:8]))
		if ml < metaLen || ml > len(ev) {
			continue
		}
		info := ev[ml:]
		for len(info) >= 4 {
			typ, il := info[0], int(ne.Uint16(info[2:4]))
			if il < 4 || il > len(info) {
				break
			}
			rec := info[:il]
			info = info[il:]
			if typ != infoDFIDName || len(rec) < 4+8+8 {
				continue
			}
			h := rec[4+8:]
			hb := int(ne.Uint32(h[0:4]))
			htype := int32(ne.Uint32(h[4:8]))
			if 8+hb > len(h) {
				continue
			}
			handle := h[8 : 8+hb]
			name := h[8+hb:]
			if i := indexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			w.event(mask, htype, handle, name)
		}
	}
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// event records one change when its directory is in a watched container.
func (w *Watcher) event(mask uint64, htype int32, handle, name []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	// The key is built in a reused buffer and looked up without a copy:
	// most events are the host's, in directories already resolved.
	w.key = binary.NativeEndian.AppendUint32(w.key[:0], uint32(htype))
	w.key = append(w.key, handle...)
	path, ok := w.dirs[string(w.key)]
	if !ok {
		var err error
		if path, err = w.resolve(htype, handle); err != nil {
			w.m.stale.Inc()
			return
		}
		if len(w.dirs) >= maxDirs {
			clear(w.dirs)
		}
		w.dirs[string(w.key)] = path
	}
	d := w.classify(path)
	if d.container == "" {
		w.m.host.Inc()
		return
	}
	w.m.container.Inc()
	// The kernel merges the events of one name that are still queued (a
	// create and the close after the write), so one mask may hold several
	// operations: each is a change, in the order they happen.
	for _, op := range operations(mask) {
		c := change{container: d.container, hostPath: filepath.Join(d.path, string(name)), path: joinInner(d.inner, string(name)), op: op}
		if w.pend[c] {
			continue // coalesced: one write reported per flush
		}
		if len(w.order) >= maxPending {
			w.m.dropped.Inc()
			return
		}
		w.pend[c] = true
		w.order = append(w.order, pending{c, time.Now()})
	}
}

func joinInner(dir, name string) string {
	if dir == "/" {
		return "/" + name
	}
	return dir + "/" + name
}

// classify finds the watched container whose directory holds path: the
// host's directories are rejected by one prefix test.
func (w *Watcher) classify(path string) dirInfo {
	p := path + "/"
	if !strings.HasPrefix(p, w.base) {
		return dirInfo{path: path}
	}
	for root, ctr := range w.roots {
		if strings.HasPrefix(p, root) {
			return dirInfo{container: ctr.ID, path: path, inner: "/" + strings.TrimSuffix(strings.TrimPrefix(p, root), "/")}
		}
	}
	return dirInfo{path: path}
}

// operations maps a fanotify mask to whalewatch.file_change.operation
// values, in the order the calls happen: create, write, chmod, rename,
// unlink.
func operations(mask uint64) []string {
	var ops []string
	for _, o := range []struct {
		bits uint64
		op   string
	}{
		{fanCreate, "create"}, {fanModify, "write"}, {fanAttrib, "chmod"},
		{fanMovedFrom | fanMovedTo, "rename"}, {fanDelete, "unlink"},
	} {
		if mask&o.bits != 0 {
			ops = append(ops, o.op)
		}
	}
	return ops
}

func (w *Watcher) flush(emit source.Emit) {
	w.mu.Lock()
	order := w.order
	w.order = nil
	clear(w.pend)
	ctrs := make(map[string]*source.Container)
	for _, p := range order {
		if ctr := w.ctrs[p.c.container]; ctr != nil {
			ctrs[p.c.container] = ctr
		}
	}
	w.mu.Unlock()
	now := time.Now()
	for _, p := range order {
		c, at := p.c, p.at
		e := fileEvent(w.host, c, at, now)
		if ctr := ctrs[c.container]; ctr != nil {
			e.Container = ctr.ECS() // a copy per event: Bound shortens in place
		} else {
			e.Container = &event.Container{ID: c.container}
		}
		emit(e)
		w.m.emitted.Inc()
	}
}

// fileEvent is one change as file telemetry; what the file is now (type,
// mode, setuid/setgid) is read with lstat, never following a symlink.
func fileEvent(host string, c change, at, now time.Time) *event.Event {
	f := &event.File{Path: c.path}
	fc := &event.FileChange{Operation: c.op}
	kind, typ := "changed", "change"
	switch c.op {
	case "create":
		kind, typ = "added", "creation"
	case "unlink":
		kind, typ = "deleted", "deletion"
	}
	if c.op != "unlink" {
		if fi, err := os.Lstat(c.hostPath); err == nil {
			m := fi.Mode()
			switch {
			case m.IsRegular():
				f.Type, f.Size = "file", fi.Size()
				fc.Executable = m&0o111 != 0
			case m.IsDir():
				f.Type = "dir"
			case m&fs.ModeSymlink != 0:
				f.Type = "symlink"
			default:
				f.Type = "other"
			}
			f.Mode = source.UnixMode(m)
			fc.Mode = f.Mode
			fc.Setuid, fc.Setgid = m&fs.ModeSetuid != 0, m&fs.ModeSetgid != 0
		} else if c.op == "rename" {
			kind, typ = "deleted", "deletion" // the old name of a move
		}
	}
	fc.Kind = kind
	msg := "file " + c.op + ": " + c.path
	return &event.Event{
		Timestamp: at.UTC(),
		Message:   msg,
		Event: event.Meta{
			ID:       event.DeriveID(host, Mode, c.container, c.path, c.op, strconv.FormatInt(at.UnixNano(), 10)),
			Kind:     event.KindEvent,
			Category: []string{"file"},
			Type:     []string{typ},
			Action:   "file-" + c.op,
			Dataset:  event.TelemetryFile.Dataset(),
			Module:   event.Module,
			Created:  now.UTC(),
		},
		Host: event.Host{Name: host},
		File: f,
		Whalewatch: event.Whalewatch{
			SchemaVersion: event.SchemaVersion,
			Telemetry:     event.TelemetryFile,
			Source:        Mode,
			FileChange:    fc,
		},
	}
}
