package fanotify

import (
	"context"
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/services/collector/internal/source"
	"github.com/whalewatch/whalewatch/services/collector/internal/source/sourcetest"
)

// record builds one fanotify event as the kernel writes it with
// FAN_REPORT_DFID_NAME: metadata, then an info record with fsid, file handle
// and name.
func record(mask uint64, handle []byte, name string) []byte {
	ne := binary.NativeEndian
	info := make([]byte, 4+8+8+len(handle)+len(name)+1)
	info[0] = infoDFIDName
	ne.PutUint16(info[2:], uint16(len(info)))
	ne.PutUint32(info[12:], uint32(len(handle)))
	ne.PutUint32(info[16:], 1) // handle type
	copy(info[20:], handle)
	copy(info[20+len(handle):], name)
	b := make([]byte, metaLen, metaLen+len(info))
	ne.PutUint32(b[0:], uint32(metaLen+len(info)))
	b[4] = 3
	ne.PutUint16(b[6:], metaLen)
	ne.PutUint64(b[8:], mask)
	ne.PutUint32(b[16:], 0xffffffff) // FAN_NOFD
	return append(b, info...)
}

func TestWatcherReportsContainerChangesOnly(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	layout := Layout{DataRoot: root, Driver: "vfs"}
	ctr := &source.Container{ID: "c1", Name: "web"}
	mounts := filepath.Join(root, "image", "vfs", "layerdb", "mounts", "c1")
	require.NoError(t, os.MkdirAll(mounts, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(mounts, "mount-id"), []byte("abc123\n"), 0o644))
	layer := filepath.Join(root, "vfs", "dir", "abc123")
	require.NoError(t, os.MkdirAll(filepath.Join(layer, "etc"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(layer, "etc", "evil"), []byte("x"), 0o755))
	require.NoError(t, os.Chmod(filepath.Join(layer, "etc", "evil"), fs.ModeSetuid|0o755))

	reg := prometheus.NewRegistry()
	w := newWatcher(layout, "h", sourcetest.Log(), reg)
	dirs := map[string]string{"\x01": filepath.Join(layer, "etc"), "\x02": "/home/someone/build", "\x03": layer}
	w.resolve = func(_ int32, h []byte) (string, error) {
		if d, ok := dirs[string(h)]; ok {
			return d, nil
		}
		return "", errors.New("stale")
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- w.Monitor(ctx, ctr, nil) }()
	require.Eventually(t, func() bool { w.mu.Lock(); defer w.mu.Unlock(); return len(w.roots) == 1 }, 5*time.Second, time.Millisecond)

	var buf []byte
	buf = append(buf, record(fanCreate, []byte{1}, "evil")...)
	buf = append(buf, record(fanModify, []byte{1}, "evil")...)
	buf = append(buf, record(fanModify, []byte{1}, "evil")...) // coalesced
	buf = append(buf, record(fanAttrib, []byte{1}, "evil")...)
	buf = append(buf, record(fanModify, []byte{2}, "main.go")...) // the host's
	buf = append(buf, record(fanDelete, []byte{9}, "gone")...)    // stale handle
	buf = append(buf, record(fanCreate|0x40000000, []byte{3}, "tmp")...)
	buf = append(buf, record(qOverflow, nil, "")[:metaLen]...)
	buf[len(buf)-metaLen] = metaLen // a lone metadata: its length is its own
	buf = append(buf, 0xde, 0xad)   // a torn tail is ignored
	w.parse(buf)

	var got sourcetest.Recorder
	w.flush(got.Emit)
	var seen []string
	for _, e := range got.All() {
		require.NoError(t, e.Validate())
		require.Equal(t, "web", e.Container.Name)
		require.Equal(t, Mode, e.Whalewatch.Source)
		seen = append(seen, e.Whalewatch.FileChange.Operation+" "+e.File.Path)
	}
	require.Equal(t, []string{"create /etc/evil", "write /etc/evil", "chmod /etc/evil", "create /tmp"}, seen)
	chmod := got.All()[2]
	require.True(t, chmod.Whalewatch.FileChange.Setuid)
	require.Equal(t, "4755", chmod.File.Mode)
	require.Equal(t, 1.0, testutil.ToFloat64(w.m.events.WithLabelValues("host")))
	require.Equal(t, 1.0, testutil.ToFloat64(w.m.events.WithLabelValues("stale")))
	require.Equal(t, 1.0, testutil.ToFloat64(w.m.events.WithLabelValues("overflow")))

	cancel()
	require.NoError(t, <-done)
	w.parse(record(fanModify, []byte{1}, "evil"))
	w.flush(got.Emit)
	require.Len(t, got.All(), 4, "a container no longer watched is not reported")
}

func FuzzParse(f *testing.F) {
	f.Add(record(fanCreate, []byte{1, 2, 3}, "x"))
	f.Fuzz(func(t *testing.T, b []byte) {
		w := newWatcher(Layout{}, "h", sourcetest.Log(), prometheus.NewRegistry())
		w.resolve = func(int32, []byte) (string, error) { return "/x", nil }
		w.parse(b) // must not panic
	})
}
