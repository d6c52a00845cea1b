package logs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// watcher is one inotify instance shared by every container's log reader:
// the default limit is 128 instances per user, far fewer than containers. A
// reader adds its log directory and is woken (coalesced) when anything in it
// is written, created or moved; on a queue overflow every reader is woken.
type watcher struct {
	f    *os.File
	fd   int // f's descriptor (File.Fd would make it blocking)
	mu   sync.Mutex
	shut bool
	subs map[int32]map[chan struct{}]struct{} // by watch descriptor
	done chan struct{}
}

func newWatcher() (*watcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("inotify_init1: %w", err)
	}
	// Non-blocking: the runtime's poller reads it, and Close ends the read.
	w := &watcher{f: os.NewFile(uintptr(fd), "inotify"), fd: fd, subs: map[int32]map[chan struct{}]struct{}{}, done: make(chan struct{})}
	go w.run()
	return w, nil
}

const watchMask = unix.IN_MODIFY | unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM | unix.IN_DELETE

// add watches dir; wake receives a value (at most one pending) after
// changes in it. cancel stops the watch (the kernel watch goes with its last
// reader: a restarted container's new reader may share it).
func (w *watcher) add(dir string) (wake <-chan struct{}, cancel func(), err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.shut {
		return nil, nil, os.ErrClosed
	}
	wd, err := unix.InotifyAddWatch(w.fd, dir, watchMask)
	if err != nil {
		return nil, nil, fmt.Errorf("inotify_add_watch %s: %w", dir, err)
	}
	ch := make(chan struct{}, 1)
	set := w.subs[int32(wd)]
	if set == nil {
		set = map[chan struct{}]struct{}{}
		w.subs[int32(wd)] = set
	}
	set[ch] = struct{}{}
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			w.mu.Lock()
			defer w.mu.Unlock()
			delete(set, ch)
			if len(set) == 0 && w.subs[int32(wd)] != nil {
				delete(w.subs, int32(wd))
				if !w.shut {
					_, _ = unix.InotifyRmWatch(w.fd, uint32(wd))
				}
			}
		})
	}, nil
}

func (w *watcher) run() {
	defer close(w.done)
	buf := make([]byte, 64<<10)
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			continue // EINTR and the like
		}
		w.dispatch(buf[:n])
	}
}

func (w *watcher) dispatch(b []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	woken := map[int32]bool{}
	for len(b) >= unix.SizeofInotifyEvent {
		wd := int32(binary.NativeEndian.Uint32(b[0:4]))
		mask := binary.NativeEndian.Uint32(b[4:8])
		l := int(binary.NativeEndian.Uint32(b[12:16]))
		if unix.SizeofInotifyEvent+l > len(b) {
			break
		}
		b = b[unix.SizeofInotifyEvent+l:]
		if mask&unix.IN_Q_OVERFLOW != 0 {
			for wd := range w.subs {
				w.wake(wd)
			}
			return
		}
		if !woken[wd] {
			woken[wd] = true
			w.wake(wd)
		}
	}
}

func (w *watcher) wake(wd int32) {
	for ch := range w.subs[wd] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func (w *watcher) close() error {
	w.mu.Lock()
	w.shut = true
	w.mu.Unlock()
	err := w.f.Close()
	<-w.done
	return err
}
