package fanotify

import (
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"
)

const (
	metaLen      = 24 // sizeof(struct fanotify_event_metadata)
	qOverflow    = unix.FAN_Q_OVERFLOW
	infoDFIDName = unix.FAN_EVENT_INFO_TYPE_DFID_NAME
	fanCreate    = unix.FAN_CREATE
	fanDelete    = unix.FAN_DELETE
	fanMovedFrom = unix.FAN_MOVED_FROM
	fanMovedTo   = unix.FAN_MOVED_TO
	fanAttrib    = unix.FAN_ATTRIB
	fanModify    = unix.FAN_CLOSE_WRITE
)

// watchMask: writes are seen at close (FAN_CLOSE_WRITE), not at every
// write(2) (FAN_MODIFY): the group sees the whole host filesystem, and a
// build on the host writes a file in thousands of calls; a container's
// write is reported when the writer closes the file.
const watchMask = unix.FAN_CREATE | unix.FAN_CLOSE_WRITE | unix.FAN_DELETE | unix.FAN_MOVED_FROM | unix.FAN_MOVED_TO |
	unix.FAN_ATTRIB | unix.FAN_ONDIR

// open makes a notification group reporting directory handles and names and
// marks the filesystem of path. The group's queue is unlimited: it sees every
// change on the host's filesystem (a build writes tens of thousands of files),
// and the default 16,384 events overflowed under `make test` and lost a
// container's writes; the reader drains it continuously, and marking a
// filesystem already needs the CAP_SYS_ADMIN that an unlimited queue needs.
func open(path string) (int, error) {
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_NOTIF|unix.FAN_REPORT_DFID_NAME|unix.FAN_UNLIMITED_QUEUE|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK,
		unix.O_RDONLY|unix.O_LARGEFILE|unix.O_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("fanotify_init(FAN_REPORT_DFID_NAME): %w", err)
	}
	if err := unix.FanotifyMark(fd, unix.FAN_MARK_ADD|unix.FAN_MARK_FILESYSTEM, watchMask, unix.AT_FDCWD, path); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("fanotify_mark(FAN_MARK_FILESYSTEM, %s): %w", path, err)
	}
	return fd, nil
}

func openDir(path string) (int, error) {
	return unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
}

func unixClose(fd int) error { return unix.Close(fd) }

// resolve turns a directory's file handle into its host path.
func resolve(mount int, htype int32, handle []byte) (string, error) {
	fd, err := unix.OpenByHandleAt(mount, unix.NewFileHandle(htype, handle), unix.O_PATH|unix.O_CLOEXEC)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	var b [4096]byte
	n, err := unix.Readlink("/proc/self/fd/"+strconv.Itoa(fd), b[:])
	if err != nil {
		return "", err
	}
	return string(b[:n]), nil
}
