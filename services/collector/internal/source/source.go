package source

import (
	"context"
	"fmt"
	"io/fs"
	"path"
	"time"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// Emit queues one event for publishing. It never blocks: the collector's
// queue is bounded and drops (and counts) what does not fit, so a source
// never stalls on NATS.
type Emit func(*event.Event)

// PerContainer is a source that watches one aspect of one running container
// until ctx ends: the collector runs one goroutine per PerContainer source
// for each running container it watches and cancels them when the container
// dies. Monitor returns nil when ctx ends or when there is nothing (more) to
// watch in this container; an error means the source could not watch it and
// is logged once.
//
// Implementations: dockertop (processes), resources, logs, diff (files),
// sockets.
type PerContainer interface {
	Monitor(ctx context.Context, ctr *Container, emit Emit) error
}

// Host is a source that watches the whole host from one goroutine, whatever
// the number of containers, until ctx ends (then it returns nil).
//
// Implementations: procconn (processes), fanotify (files), exposure (the
// Engine API's TCP exposure), and the kernel sensor.
type Host interface {
	Run(ctx context.Context, emit Emit) error
}

// Containers is the collector's container cache as the host sources see it:
// the container of an id, ok false while it is not known (yet). The kernel
// sensor's sensor.Containers is the same method with event.Container.
type Containers interface {
	Lookup(id string) (*Container, bool)
}

// CallTimeout bounds one Docker API call, so that a stuck engine cannot stall
// the event loop or a source for ever.
const CallTimeout = 10 * time.Second

// Source names: whalewatch.source of events and the label of the
// collector's source-mode metric.
const (
	ModeEBPF          = "ebpf"
	ModeProcConnector = "proc-connector"
	ModeDockerTop     = "docker-top"
)

// UntilTick is the time from now to this host's next tick of period every:
// the next instant that is offset plus a whole number of every since the
// Unix epoch (a whole period when now is one; 0 when every is not positive).
// Periodic work of many containers timed this way wakes the collector once
// per period for all of them instead of once per container: each wake-up of
// an idle Go process costs a thread wake-up, the scheduler's spinning and its
// system monitor's polling (measured at 200 idle containers in
// docs/PERFORMANCE.md). offset (poll.Phase of the host name) spreads the hosts of one NATS
// cluster over the period, so that their collectors do not publish at the
// same instants.
func UntilTick(now time.Time, every, offset time.Duration) time.Duration {
	if every <= 0 {
		return 0
	}
	r := (now.UnixNano() - int64(offset)) % int64(every)
	if r < 0 {
		r += int64(every)
	}
	return every - time.Duration(r)
}

// ProcessName is ECS process.name from argv[0]: its base name. BusyBox
// applets keep their applet name there ("nc"), which is what rules match.
func ProcessName(argv0 string) string {
	if argv0 == "" {
		return ""
	}
	return path.Base(argv0)
}

// HostMounts are where the host's /proc and cgroup hierarchy are mounted
// (the resource, file and socket sources read containers' files there).
type HostMounts struct {
	Proc   string // "/proc" on the host
	Cgroup string // "/sys/fs/cgroup" on the host; empty: never read
}

// UnixMode renders the permission, setuid, setgid and sticky bits of m in
// octal ("4755"), as file.mode of file telemetry, whatever source saw it.
func UnixMode(m fs.FileMode) string {
	v := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		v |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		v |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		v |= 0o1000
	}
	return fmt.Sprintf("%04o", v)
}
