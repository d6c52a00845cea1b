package diff

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/poll"
	"github.com/whalewatch/whalewatch/services/collector/internal/source"
	"github.com/whalewatch/whalewatch/services/collector/internal/source/sourcetest"
)

// fakeRoot makes <proc>/<pid>/root, the container's root as the file
// monitor reads it.
func fakeRoot(t *testing.T) (proc, root string) {
	t.Helper()
	proc = t.TempDir()
	root = filepath.Join(proc, "42", "root")
	require.NoError(t, os.MkdirAll(filepath.Join(root, "tmp"), 0o755))
	return proc, root
}

func newTestFileMonitor(proc string, max int) *Monitor {
	return New(nil, time.Hour, Beside{}, Config{MaxChanges: max}, source.HostMounts{Proc: proc}, "h",
		slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewCounter(prometheus.CounterOpts{Name: "e"}), prometheus.NewRegistry())
}

type fileSeen struct {
	path, kind string
	exec       bool
	mode       string
}

func fileEvents(es []*event.Event) []fileSeen {
	var out []fileSeen
	for _, e := range es {
		out = append(out, fileSeen{e.File.Path, e.Whalewatch.FileChange.Kind, e.Whalewatch.FileChange.Executable, e.File.Mode})
	}
	return out
}

func TestFileMonitorLooks(t *testing.T) {
	t.Parallel()
	proc, root := fakeRoot(t)
	f := newTestFileMonitor(proc, 100)
	ctr := &source.Container{ID: "c1", InitPID: 42}
	write := func(p string, mode os.FileMode) {
		require.NoError(t, os.WriteFile(filepath.Join(root, p), []byte("x"), mode))
		require.NoError(t, os.Chmod(filepath.Join(root, p), mode))
	}
	diff := func(cs ...string) []container.FilesystemChange {
		var out []container.FilesystemChange
		for _, c := range cs {
			k := map[byte]container.ChangeType{'A': container.ChangeAdd, 'C': container.ChangeModify, 'D': container.ChangeDelete}[c[0]]
			out = append(out, container.FilesystemChange{Kind: k, Path: c[2:]})
		}
		return out
	}

	// First look: what the container already changed is published once.
	write("tmp/old", 0o644)
	var got sourcetest.Recorder
	seen := f.look(ctr, diff("C /tmp", "A /tmp/old", "D /etc/motd"), nil, got.Emit)
	require.Equal(t, []fileSeen{
		{"/tmp", "changed", false, "0755"}, {"/tmp/old", "added", false, "0644"}, {"/etc/motd", "deleted", false, ""},
	}, fileEvents(got.All()))
	e := got.All()[1]
	require.Equal(t, "file", e.File.Type)
	require.Equal(t, int64(1), e.File.Size)
	require.Equal(t, []string{"file"}, e.Event.Category)
	require.Equal(t, []string{"creation"}, e.Event.Type)
	e.Container = &event.Container{ID: "c1"}
	require.NoError(t, e.Validate())

	// Nothing changed: nothing published.
	got = sourcetest.Recorder{}
	seen = f.look(ctr, diff("C /tmp", "A /tmp/old", "D /etc/motd"), seen, got.Emit)
	require.Empty(t, got.All())

	// A dropper written, then made executable; a new file in /tmp does not
	// make /tmp itself change.
	write("tmp/dropper", 0o644)
	seen = f.look(ctr, diff("C /tmp", "A /tmp/dropper", "A /tmp/old", "D /etc/motd"), seen, got.Emit)
	require.NoError(t, os.Chmod(filepath.Join(root, "tmp/dropper"), 0o755|os.ModeSetuid))
	seen = f.look(ctr, diff("C /tmp", "A /tmp/dropper", "A /tmp/old", "D /etc/motd"), seen, got.Emit)
	require.Equal(t, []fileSeen{
		{"/tmp/dropper", "added", false, "0644"}, {"/tmp/dropper", "changed", true, "4755"},
	}, fileEvents(got.All()))

	// An added file that is gone from the diff was deleted.
	got = sourcetest.Recorder{}
	require.NoError(t, os.Remove(filepath.Join(root, "tmp/old")))
	f.look(ctr, diff("C /tmp", "A /tmp/dropper", "D /etc/motd"), seen, got.Emit)
	require.Equal(t, []fileSeen{{"/tmp/old", "deleted", false, ""}}, fileEvents(got.All()))
}

func TestFileMonitorNeverLeavesTheContainerRoot(t *testing.T) {
	t.Parallel()
	proc, root := fakeRoot(t)
	outside := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(outside, "secret"), []byte("host"), 0o755))
	require.NoError(t, os.Symlink(outside, filepath.Join(root, "tmp", "escape")))
	require.NoError(t, os.Symlink("../../..", filepath.Join(root, "tmp", "up")))
	f := newTestFileMonitor(proc, 100)
	var got sourcetest.Recorder
	f.look(&source.Container{ID: "c1", InitPID: 42}, []container.FilesystemChange{
		{Kind: container.ChangeAdd, Path: "/tmp/escape"},
		{Kind: container.ChangeAdd, Path: "/tmp/escape/secret"},
		{Kind: container.ChangeAdd, Path: "/tmp/up/" + strings.TrimPrefix(outside, "/") + "/secret"},
		{Kind: container.ChangeAdd, Path: "/../../../../" + strings.TrimPrefix(outside, "/") + "/secret"},
	}, nil, got.Emit)
	es := got.All()
	require.Len(t, es, 4)
	require.Equal(t, "symlink", es[0].File.Type, "the link itself, not its target")
	for _, e := range es[1:] {
		require.Empty(t, e.File.Type, "%s: not described through a link out of the root", e.File.Path)
		require.False(t, e.Whalewatch.FileChange.Executable)
	}
}

func TestFileMonitorBoundsEachLook(t *testing.T) {
	t.Parallel()
	f := newTestFileMonitor(t.TempDir(), 2) // no such pid: changes without details
	ctr := &source.Container{ID: "c1", InitPID: 42}
	var changes []container.FilesystemChange
	for _, p := range []string{"/a", "/b", "/c", "/d", "/e"} {
		changes = append(changes, container.FilesystemChange{Kind: container.ChangeAdd, Path: p})
	}
	var got sourcetest.Recorder
	var seen map[string]fileState
	for range 3 {
		seen = f.look(ctr, changes, seen, got.Emit)
	}
	var paths []string
	for _, s := range fileEvents(got.All()) {
		paths = append(paths, s.path)
	}
	require.Equal(t, []string{"/a", "/b", "/c", "/d", "/e"}, paths, "deferred changes follow at later looks")
	require.Equal(t, 4.0, testutil.ToFloat64(f.overflow))
}

// countingAPI answers every docker diff with one added file and counts the
// calls by container.
type countingAPI struct {
	calls chan string
}

func (a countingAPI) ContainerDiff(_ context.Context, id string) ([]container.FilesystemChange, error) {
	a.calls <- id
	return []container.FilesystemChange{{Path: "/tmp/x", Kind: container.ChangeAdd}}, nil
}

// Beside the kernel sensor without a period, docker diff looks once at a
// container older than the sensor, never on a timer, and again at every
// container when the sensor lost records; a container the sensor saw start
// gets no first look.
func TestReconcileOnLossOnly(t *testing.T) {
	t.Parallel()
	api := countingAPI{calls: make(chan string, 16)}
	listening := time.Now()
	var lost poll.Signal
	f := New(api, 0, Beside{Since: func() time.Time { return listening }, Wake: lost.C}, Config{MaxChanges: 10},
		source.HostMounts{Proc: t.TempDir()}, "h", slog.New(slog.NewTextHandler(io.Discard, nil)),
		prometheus.NewCounter(prometheus.CounterOpts{Name: "e"}), prometheus.NewRegistry())
	f.spread = 0
	old := &source.Container{ID: "old", StartedAt: listening.Add(-time.Hour)}
	young := &source.Container{ID: "young", StartedAt: listening.Add(time.Minute)}
	emitted := make(chan *event.Event, 16)
	for _, c := range []*source.Container{old, young} {
		go func() { _ = f.Monitor(t.Context(), c, func(e *event.Event) { emitted <- e }) }()
	}
	next := func(what string) string {
		t.Helper()
		select {
		case id := <-api.calls:
			return id
		case <-time.After(10 * time.Second):
			t.Fatalf("no docker diff: %s", what)
			return ""
		}
	}
	require.Equal(t, "old", next("first look at the container older than the sensor"))
	require.Equal(t, "/tmp/x", (<-emitted).File.Path)
	select {
	case id := <-api.calls:
		t.Fatalf("docker diff of %s without a period or a loss", id)
	case <-time.After(100 * time.Millisecond):
	}
	// Lost records: every container looks again (fire until both have:
	// a loop may not be waiting yet).
	looked := map[string]bool{}
	for deadline := time.Now().Add(10 * time.Second); len(looked) < 2; {
		require.False(t, time.Now().After(deadline), "looked again after the loss: %v", looked)
		lost.Fire()
		select {
		case id := <-api.calls:
			looked[id] = true
		case <-time.After(50 * time.Millisecond):
		}
	}
}
