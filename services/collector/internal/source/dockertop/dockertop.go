// Package dockertop is the last process source of the fallback chain: it
// polls docker top for each running container and reports every process it
// has not reported before. It misses processes that live shorter than a
// poll interval, which the kernel sensor and the process connector do not;
// beside those it runs once per container that predates them (an inventory).
package dockertop

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/poll"
	"github.com/whalewatch/whalewatch/services/collector/internal/source"
)

// topArgs are the ps arguments of each poll. dockerd runs the host's ps and
// keeps the rows of the container's processes, so PIDs are the host's. The
// user is asked as a uid because ps resolves names in the host's
// /etc/passwd, which says nothing about the container's users; etimes dates
// the process. args must be last: dockerd splits rows on whitespace and joins
// whatever is left into the last column.
var topArgs = []string{"-o", "pid,ppid,uid,etimes,args"}

// API is the engine call the poller makes.
type API interface {
	ContainerTop(ctx context.Context, id string, arguments []string) (container.TopResponse, error)
}

// Poller is the docker-top process source (a source.PerContainer).
type Poller struct {
	docker   API
	host     string
	interval time.Duration
	once     bool // poll once and return: the inventory beside an event-driven source
	log      *slog.Logger
	errors   prometheus.Counter
	now      func() time.Time
}

// New returns the poller of docker: every interval per container, or once
// per container when once is set. errs counts failed calls.
func New(docker API, host string, interval time.Duration, once bool, log *slog.Logger, errs prometheus.Counter) *Poller {
	return &Poller{docker: docker, host: host, interval: interval, once: once, log: log, errors: errs, now: time.Now}
}

// Monitor polls at once, then every interval. A process is reported when its
// pid is new or its command line changed (an exec in place); pids that
// vanished are forgotten, so a reused pid is reported again.
func (t *Poller) Monitor(ctx context.Context, ctr *source.Container, emit source.Emit) error {
	log := t.log.With("container_id", ctr.ID)
	args := topArgs
	seen := map[int]string{}
	first := true
	refresh := func(ctx context.Context) error {
		resp, err := t.top(ctx, ctr.ID, args)
		if err != nil && args != nil && ctx.Err() == nil {
			// A host whose ps does not know these columns (BusyBox ps):
			// fall back to the engine's default "-ef" for good if that works.
			if r, err2 := t.top(ctx, ctr.ID, nil); err2 == nil {
				log.Warn("docker top rejected the ps arguments, using the engine's default", "ps_args", strings.Join(args, " "), "err", err)
				resp, err, args = r, nil, nil
			}
		}
		if err != nil {
			return err
		}
		procs, perr := parseTop(resp)
		if perr != nil {
			t.errors.Inc()
			log.Warn("unreadable docker top answer", "err", perr)
		}
		now := t.now()
		next := make(map[int]string, len(procs))
		for _, p := range procs {
			next[p.PID] = p.Command
			if old, ok := seen[p.PID]; ok && old == p.Command {
				continue
			}
			emit(processEvent(t.host, ctr.ID, p, !first, now))
		}
		seen, first = next, false
		return nil
	}
	if t.once {
		if err := refresh(ctx); err != nil && ctx.Err() == nil {
			t.errors.Inc()
			log.Warn("docker top failed", "err", err)
		}
		return nil
	}
	return poll.Loop{What: "docker top", Interval: t.interval, Log: log, Failures: t.errors}.Run(ctx, refresh)
}

func (t *Poller) top(ctx context.Context, id string, args []string) (container.TopResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, source.CallTimeout)
	defer cancel()
	return t.docker.ContainerTop(ctx, id, args)
}

// topProcess is one row of docker top.
type topProcess struct {
	PID     int
	PPID    int           // 0 when unknown
	User    string        // a uid, or a user name under the engine's default ps arguments
	Elapsed time.Duration // -1 when unknown
	Command string        // the command line, whitespace runs collapsed by dockerd
}

var errNoPIDColumn = errors.New("docker top answer has no PID column")

// parseTop reads docker top's answer by its column titles, so it reads the
// engine's default columns as well as topArgs'. Everything in it comes from
// the container's processes: rows may be short, long or nonsensical; a row
// without a valid pid is skipped.
func parseTop(r container.TopResponse) ([]topProcess, error) {
	if len(r.Processes) == 0 {
		return nil, nil
	}
	col := map[string]int{}
	for i, t := range r.Titles {
		t = strings.ToUpper(strings.TrimSpace(t))
		if _, dup := col[t]; !dup {
			col[t] = i
		}
	}
	pidCol, ok := col["PID"]
	if !ok {
		return nil, errNoPIDColumn
	}
	find := func(names ...string) int {
		for _, n := range names {
			if i, ok := col[n]; ok {
				return i
			}
		}
		return -1
	}
	ppidCol := find("PPID")
	userCol := find("UID", "EUID", "USER", "RUID", "RUSER")
	elapsedCol := find("ELAPSED")
	cmdCol := find("COMMAND", "CMD", "ARGS")
	last := len(r.Titles) - 1

	out := make([]topProcess, 0, len(r.Processes))
	for _, row := range r.Processes {
		cell := func(i int) string {
			if i < 0 || i >= len(row) {
				return ""
			}
			return row[i]
		}
		pid, err := strconv.Atoi(strings.TrimSpace(cell(pidCol)))
		if err != nil || pid <= 0 {
			continue
		}
		p := topProcess{PID: pid, User: strings.TrimSpace(cell(userCol)), Elapsed: -1}
		if ppid, err := strconv.Atoi(strings.TrimSpace(cell(ppidCol))); err == nil && ppid > 0 {
			p.PPID = ppid
		}
		if d, ok := parseElapsed(cell(elapsedCol)); ok {
			p.Elapsed = d
		}
		switch {
		case cmdCol < 0 || cmdCol >= len(row):
		case cmdCol == last:
			// dockerd joins the overflow of the last column; do the same if
			// another engine does not.
			p.Command = strings.Join(row[cmdCol:], " ")
		default:
			p.Command = row[cmdCol]
		}
		out = append(out, p)
	}
	return out, nil
}

// parseElapsed reads ps etimes (seconds) or etime ([[dd-]hh:]mm:ss).
func parseElapsed(s string) (time.Duration, bool) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, false
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 || n > 100*365*24*3600 {
			return 0, false
		}
		return time.Duration(n) * time.Second, true
	}
	var days int64
	if d, rest, ok := strings.Cut(s, "-"); ok {
		n, err := strconv.ParseInt(d, 10, 64)
		if err != nil || n < 0 || n > 100*365 {
			return 0, false
		}
		days, s = n, rest
	}
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return 0, false
	}
	var secs int64
	for i, p := range parts {
		n, err := strconv.ParseInt(p, 10, 64)
		if err != nil || n < 0 || (i > 0 && n > 59) || n > 1e6 {
			return 0, false
		}
		secs = secs*60 + n
	}
	return time.Duration(days*86400+secs) * time.Second, true
}

// processEvent builds the process telemetry of one process docker top showed.
// started says the process appeared since the previous poll (ECS type
// start) rather than being there at the first (info). Its id derives from
// the container, pid and command line, so the processes a restarted collector
// finds again are stored once within JetStream's duplicate window.
func processEvent(host, containerID string, p topProcess, started bool, now time.Time) *event.Event {
	args := strings.Fields(p.Command)
	proc := &event.Process{
		PID:         p.PID,
		CommandLine: p.Command,
		Args:        args,
		ArgsCount:   len(args),
		Name:        topName(args),
	}
	if p.PPID > 0 {
		proc.Parent = &event.Parent{PID: p.PPID}
	}
	switch {
	case p.User == "":
	case isDigits(p.User):
		proc.User = &event.User{ID: p.User}
	default:
		proc.User = &event.User{Name: p.User}
	}
	if p.Elapsed >= 0 {
		proc.Start = now.Truncate(time.Second).Add(-p.Elapsed).UTC()
	}
	typ := "info"
	if started {
		typ = "start"
	}
	return &event.Event{
		Timestamp: now.UTC(),
		Message:   "process " + strconv.Itoa(p.PID) + ": " + p.Command,
		Event: event.Meta{
			ID:       event.DeriveID(host, source.ModeDockerTop, containerID, strconv.Itoa(p.PID), p.Command),
			Kind:     event.KindEvent,
			Category: []string{"process"},
			Type:     []string{typ},
			Action:   "process-seen",
			Dataset:  event.TelemetryProcess.Dataset(),
			Module:   event.Module,
			Created:  now.UTC(),
		},
		Host:    event.Host{Name: host},
		Process: proc,
		Whalewatch: event.Whalewatch{
			SchemaVersion: event.SchemaVersion,
			Telemetry:     event.TelemetryProcess,
			Source:        source.ModeDockerTop,
		},
	}
}

// topName is process.name of a ps command line. ps shows a process without
// argv (a kernel thread, a zombie, one that cleared it) as "[comm]".
func topName(args []string) string {
	if len(args) == 0 {
		return ""
	}
	a := args[0]
	if len(a) > 2 && a[0] == '[' && a[len(a)-1] == ']' {
		return a[1 : len(a)-1]
	}
	return source.ProcessName(a)
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
