//go:build !linux

package procconn

import (
	"errors"
	"time"
)

// openProcConnector: the process connector is Linux's.
func openProcConnector() (procSocket, error) {
	return nil, errors.New("the process connector needs Linux")
}

func monotonicNow() uint64 { return uint64(time.Now().UnixNano()) }

func raiseReceivePriority() (string, func()) { return "normal", func() {} }
