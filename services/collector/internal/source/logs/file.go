package logs

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/poll"
	"github.com/whalewatch/whalewatch/services/collector/internal/source"
)

const (
	// safetyPoll: with inotify, a file is still looked at this often, in
	// case a wake-up was lost. A queue overflow already wakes every reader,
	// so this is a last resort; it is slow because with hundreds of idle
	// containers each look is a thread wake-up (2 s cost 100 a second at
	// 200 containers).
	safetyPoll = 30 * time.Second
	// fallbackPoll: without inotify, how often a file is looked at.
	fallbackPoll = 100 * time.Millisecond
	// maxRecord bounds one json-file record (the driver cuts lines into
	// 16 KiB pieces, so a real record is at most about 100 KiB escaped); a
	// longer one is skipped and counted.
	maxRecord = 1 << 20
)

// record is one line of the json-file driver's file.
type record struct {
	Log    string    `json:"log"`
	Stream string    `json:"stream"`
	Time   time.Time `json:"time"`
}

// tail follows ctr's json-file log file until ctx ends, then reads what is
// left once more (the container's last lines) and returns nil. It returns an
// error when the file cannot be opened: the caller falls back to the stream.
func (l *Monitor) tail(ctx context.Context, ctr *source.Container, b *logBatcher) error {
	f, err := os.Open(ctr.LogPath)
	if err != nil {
		return err
	}
	fromStart := !ctr.StartedAt.IsZero() && l.now().Sub(ctr.StartedAt) < logCatchUp
	if !fromStart {
		if _, err := f.Seek(0, io.SeekEnd); err != nil {
			f.Close()
			return err
		}
	}
	t := newFileTail(ctr.LogPath, f, b, l)
	defer t.close()
	if fromStart && t.fi != nil {
		// A young container may have rotated its log before the reader
		// came: its rotated files first, oldest first.
		t.catchUp(nil, t.fi)
		t.use(f)
	}
	l.m.readers.WithLabelValues(SourceFile).Inc()

	every := l.poll
	var wake <-chan struct{}
	if l.watch != nil {
		ch, cancel, err := l.watch.add(filepath.Dir(ctr.LogPath))
		if err != nil {
			l.log.Debug("inotify watch failed: log file polled", "container_id", ctr.ID, "err", err)
			every = fallbackPoll
		} else {
			wake = ch
			defer cancel()
		}
	}
	// Every reader looks at the same instants (source.UntilTick): one
	// wake-up of the collector per period for all idle containers.
	phase := poll.Phase(l.host, every)
	tick := time.NewTimer(source.UntilTick(time.Now(), every, phase))
	defer tick.Stop()
	for {
		t.drain()
		select {
		case <-ctx.Done():
			t.drain()
			return nil
		case <-wake:
		case <-tick.C:
			tick.Reset(source.UntilTick(time.Now(), every, phase))
		}
	}
}

// fileTail reads one container's log file and its rotations.
type fileTail struct {
	path string
	f    *os.File
	fi   fs.FileInfo // of f, when opened
	r    *bufio.Reader
	rec  []byte // a record read up to EOF, without its newline yet
	skip bool   // inside a record longer than maxRecord: drop until its newline
	b    *logBatcher
	l    *Monitor
	// split joins the driver's 16 KiB pieces of a long line and bounds it,
	// by stream.
	split [3]lineSplitter
	ts    time.Time // of the record being split
}

func newFileTail(path string, f *os.File, b *logBatcher, l *Monitor) *fileTail {
	t := &fileTail{path: path, b: b, l: l}
	for i := range t.split {
		t.split[i].max = event.MaxLogLine
	}
	t.use(f)
	return t
}

func (t *fileTail) use(f *os.File) {
	t.f = f
	t.fi, _ = f.Stat()
	if t.r == nil {
		t.r = bufio.NewReaderSize(f, 64<<10)
	} else {
		t.r.Reset(f)
	}
	t.rec, t.skip = t.rec[:0], false
}

func (t *fileTail) close() {
	if t.f != nil {
		t.f.Close()
	}
}

// drain reads the file to its end; when the driver has rotated it (the
// path names another file now), it reads the rotated file to its end, then
// the files rotated in between (catchUp) and goes on with the new file. A file cut shorter than what was read
// (truncation) is read again from its start.
func (t *fileTail) drain() {
	for range 4 { // bounded: a rotation storm is caught up at the next wake
		t.readToEOF()
		cur, err := os.Stat(t.path)
		if err != nil {
			return // between the rename and the create: at the next wake
		}
		if t.fi != nil && os.SameFile(cur, t.fi) {
			if off, err := t.f.Seek(0, io.SeekCurrent); err == nil && cur.Size() < off-int64(t.r.Buffered()) {
				_, _ = t.f.Seek(0, io.SeekStart)
				t.use(t.f)
			}
			return
		}
		old := t.fi
		next, err := os.Open(t.path)
		if err != nil {
			return
		}
		t.f.Close()
		t.catchUp(old, cur)
		t.use(next)
	}
}

// maxRotated bounds the rotated files looked at (the driver's max-file).
const maxRotated = 9

// catchUp reads the files rotated since old (which was just read to its
// end) that were never opened: the reader fell behind by more than one
// rotation. The driver shifts path.1 → path.2 …, so the files newer than
// old are those with a lower suffix than old's, or every one when old was
// already deleted; they are read oldest first. cur is the new file.
func (t *fileTail) catchUp(old, cur fs.FileInfo) {
	var rotated []*os.File
	oldAt := -1
	for i := 1; i <= maxRotated; i++ {
		f, err := os.Open(t.path + "." + strconv.Itoa(i))
		if err != nil {
			break
		}
		fi, err := f.Stat()
		if err != nil || os.SameFile(fi, cur) {
			f.Close()
			break
		}
		if old != nil && os.SameFile(fi, old) {
			f.Close()
			oldAt = i
			break
		}
		rotated = append(rotated, f)
	}
	if oldAt < 0 && old != nil && len(rotated) == maxRotated {
		t.l.log.Debug("log rotated more than the reader can follow", "path", t.path)
	}
	for i := len(rotated) - 1; i >= 0; i-- {
		t.use(rotated[i])
		t.readToEOF()
		rotated[i].Close()
	}
}

// readToEOF reads the complete records there are; a record cut by EOF waits
// in rec for the rest.
func (t *fileTail) readToEOF() {
	for {
		chunk, err := t.r.ReadSlice('\n')
		if len(chunk) > 0 {
			t.add(chunk)
		}
		if err == nil || errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return // io.EOF, or a read error: tried again at the next wake
	}
}

// add takes bytes of the file, a whole record when they end with a newline.
func (t *fileTail) add(chunk []byte) {
	complete := chunk[len(chunk)-1] == '\n'
	if t.skip {
		t.skip = !complete
		return
	}
	if len(t.rec)+len(chunk) > maxRecord {
		t.l.m.bad.Inc()
		t.rec, t.skip = t.rec[:0], !complete
		return
	}
	t.rec = append(t.rec, chunk...)
	if !complete {
		return
	}
	t.record(bytes.TrimSpace(t.rec))
	t.rec = t.rec[:0]
}

func (t *fileTail) record(line []byte) {
	if len(line) == 0 {
		return
	}
	var r record
	if err := json.Unmarshal(line, &r); err != nil {
		t.l.m.bad.Inc()
		return
	}
	stream := streamStdout
	if r.Stream == "stderr" {
		stream = streamStderr
	}
	t.ts = r.Time
	t.split[stream].write([]byte(r.Log), func(text []byte, truncated bool) {
		t.b.line(stream, t.ts, text, truncated)
	})
}
