//go:build !unix

package proc

import "errors"

var errUnsupported = errors.New("/proc is not available on this system")

// Reader reads /proc/<pid> files; here it finds none.
type Reader struct{}

// NewReader returns a Reader that finds no process.
func NewReader(string) *Reader { return &Reader{} }

// Exec is what ReadExec found of a process.
type Exec struct {
	Args          []string
	ArgsTruncated bool
	Executable    string
	Cwd           string
	Stat          Stat
	StatOK        bool
	Status        Status
	StatusOK      bool
	Stdio         [3]string
}

func (r *Reader) ContainerID(int) (string, bool) { return "", false }
func (r *Reader) ReadExec(int) Exec              { return Exec{} }
func (r *Reader) Stat(int) (Stat, error)         { return Stat{}, errUnsupported }
func (r *Reader) BootTime() (int64, error)       { return 0, errUnsupported }
func (r *Reader) Alive(int) bool                 { return false }
