//go:build !unix

package cgroupstats

import (
	"errors"
	"io/fs"
	"os"
)

// counter is one file a located container's samples read; without unix
// pread it is read by path each time.
type counter struct{ path string }

func (r *Reader) openCounter(path string) (*counter, error) {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	return &counter{path: path}, nil
}

func (f *counter) read(buf *[]byte) ([]byte, error) {
	data, err := os.ReadFile(f.path)
	if err == nil && len(data) > maxCounterFile {
		return nil, &fs.PathError{Op: "read", Path: f.path, Err: errCounterTooLong}
	}
	return data, err
}

func (f *counter) close() bool { return false }

func descriptorLimit() int64 { return 0 }
