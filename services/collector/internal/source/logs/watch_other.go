//go:build !linux

package logs

import "errors"

// watcher: inotify is Linux's; elsewhere log files are polled.
type watcher struct{}

func newWatcher() (*watcher, error) { return nil, errors.New("inotify needs Linux") }

func (w *watcher) add(string) (<-chan struct{}, func(), error) {
	return nil, nil, errors.New("inotify needs Linux")
}

func (w *watcher) close() error { return nil }
