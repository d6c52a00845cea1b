package executor

import (
	"context"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"

	"github.com/whalewatch/whalewatch/pkg/response"
	"github.com/whalewatch/whalewatch/services/collector/internal/source"
)

// act carries out req on the container as inspected. Each action checks the
// state first and does nothing when the container is already where the
// request wants it (the note says so); after an engine error it looks again,
// so a race with another actor that reached the same state is not a failure.
func (r *Executor) act(ctx context.Context, req response.Request, in container.InspectResponse) (note string, err error) {
	if note, skip := satisfied(req, in); skip {
		return note, nil
	}
	actx, cancel := context.WithTimeout(ctx, source.CallTimeout+r.cfg.StopTimeout)
	defer cancel()
	id := in.ID
	switch req.Action {
	case response.Pause:
		if in.State == nil || !in.State.Running {
			return "", errors.New("container is not running")
		}
		err = r.docker.ContainerPause(actx, id)
	case response.Unpause:
		err = r.docker.ContainerUnpause(actx, id)
	case response.Stop:
		secs := int(r.cfg.StopTimeout.Seconds())
		err = r.docker.ContainerStop(actx, id, container.StopOptions{Timeout: &secs})
	case response.Kill:
		err = r.docker.ContainerKill(actx, id, "KILL")
	case response.Disconnect:
		err = r.disconnect(actx, in)
	case response.LimitCPU:
		_, err = r.docker.ContainerUpdate(actx, id, container.UpdateConfig{Resources: cpuLimit(req.CPUs, in.HostConfig)})
	default:
		return "", fmt.Errorf("unknown action %q", req.Action)
	}
	if err == nil {
		return done[req.Action], nil
	}
	// Reached anyway (say the container was killed meanwhile)?
	ictx, cancel2 := context.WithTimeout(ctx, source.CallTimeout)
	defer cancel2()
	if again, ierr := r.docker.ContainerInspect(ictx, id); ierr == nil {
		if note, ok := satisfied(req, again); ok {
			return note, nil
		}
	}
	return "", fmt.Errorf("%s: %w", req.Action, err)
}

// done is the note of an action carried out.
var done = map[response.Action]string{
	response.Pause:      "paused",
	response.Unpause:    "unpaused",
	response.Stop:       "stopped",
	response.Kill:       "killed",
	response.Disconnect: "disconnected from every network",
	response.LimitCPU:   "CPU limited",
}

// satisfied reports whether the container already is where req wants it.
func satisfied(req response.Request, in container.InspectResponse) (string, bool) {
	st := in.State
	if st == nil {
		return "", false
	}
	switch req.Action {
	case response.Pause:
		if st.Paused {
			return "already paused", true
		}
	case response.Unpause:
		if !st.Paused {
			return "not paused", true
		}
	case response.Stop, response.Kill:
		if !st.Running {
			return "not running", true
		}
	case response.Disconnect:
		if len(networks(in)) == 0 {
			return "connected to no network", true
		}
	case response.LimitCPU:
		if h := in.HostConfig; h != nil && cpuLimited(req.CPUs, h) {
			return "already limited", true
		}
	}
	return "", false
}

// networks lists the networks the container can be disconnected from. "none"
// is no network; "host" cannot be left, so it is listed and fails.
func networks(in container.InspectResponse) []string {
	if in.NetworkSettings == nil {
		return nil
	}
	var out []string
	for name := range in.NetworkSettings.Networks {
		if name != "none" {
			out = append(out, name)
		}
	}
	return out
}

func (r *Executor) disconnect(ctx context.Context, in container.InspectResponse) error {
	var errs []error
	for _, name := range networks(in) {
		if name == "host" {
			errs = append(errs, errors.New("a container on the host network cannot be disconnected (stop or kill it instead)"))
			continue
		}
		if err := r.docker.NetworkDisconnect(ctx, name, in.ID, true); err != nil && !cerrdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("network %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

const cpuPeriod = 100000 // µs, the kernel's default CFS period

// cpuLimit is the update that caps CPU at cpus cores. The engine refuses to
// switch a container between NanoCPUs and CPUQuota/CPUPeriod, so a container
// limited by quota keeps quota.
func cpuLimit(cpus float64, h *container.HostConfig) container.Resources {
	if h != nil && h.NanoCPUs == 0 && (h.CPUQuota > 0 || h.CPUPeriod > 0) {
		period := h.CPUPeriod
		if period == 0 {
			period = cpuPeriod
		}
		return container.Resources{CPUPeriod: period, CPUQuota: int64(math.Round(cpus * float64(period)))}
	}
	return container.Resources{NanoCPUs: int64(math.Round(cpus * 1e9))}
}

func cpuLimited(cpus float64, h *container.HostConfig) bool {
	want := cpuLimit(cpus, h)
	if want.NanoCPUs != 0 {
		return h.NanoCPUs == want.NanoCPUs
	}
	return h.CPUQuota == want.CPUQuota && h.CPUPeriod == want.CPUPeriod
}

// containerIDInPath finds a container id in a cgroup path or a mount source:
// ".../docker/<id>", ".../docker-<id>.scope", ".../containers/<id>/...".
var containerIDInPath = regexp.MustCompile(`(?:docker[/-]|containers/|libpod-)([0-9a-f]{64})(?:\.scope|/|$|\s)`)

// selfContainerID is the id of the container the collector runs in, or ""
// when it runs on the host. It reads /proc/self/cgroup (cgroup v1, or v2 with
// the host's cgroup namespace), else /proc/self/mountinfo, where the
// container's /etc/hostname and /etc/resolv.conf are mounted from
// /var/lib/docker/containers/<id>/ (cgroup v2 with a private namespace
// shows only "0::/").
func selfContainerID(read func(string) ([]byte, error)) string {
	for _, f := range []string{"/proc/self/cgroup", "/proc/self/mountinfo"} {
		data, err := read(f)
		if err != nil {
			continue
		}
		for line := range strings.SplitSeq(string(data), "\n") {
			if m := containerIDInPath.FindStringSubmatch(line); m != nil {
				return m[1]
			}
		}
	}
	return ""
}
