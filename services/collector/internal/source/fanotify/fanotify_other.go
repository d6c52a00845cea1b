//go:build !linux

package fanotify

import "errors"

const (
	metaLen      = 24
	qOverflow    = 0x4000
	infoDFIDName = 2
	fanCreate    = 0x100
	fanDelete    = 0x200
	fanMovedFrom = 0x40
	fanMovedTo   = 0x80
	fanAttrib    = 0x4
	fanModify    = 0x8 // FAN_CLOSE_WRITE
)

var errLinux = errors.New("fanotify needs Linux")

func open(string) (int, error)                   { return -1, errLinux }
func openDir(string) (int, error)                { return -1, errLinux }
func unixClose(int) error                        { return nil }
func resolve(int, int32, []byte) (string, error) { return "", errLinux }
