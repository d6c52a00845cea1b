// Package response is the contract of response actions: the request the
// detector (or an operator) publishes to make a host's collector act on a
// container, and the result the collector publishes back. Both are
// event.Event documents (event.kind "event", event.dataset
// event.DatasetResponse, whalewatch.response set):
//
//	request  whalewatch.actions.request.<host>.<container-id>
//	         event.action = whalewatch.response.action = the action;
//	         whalewatch.response.dry_run, .reason, .cpus (limit_cpu);
//	         whalewatch.trigger = event.id of the threat behind it
//	result   whalewatch.actions.result.<host>.<container-id>
//	         whalewatch.response.status = done | refused | failed | dry_run,
//	         .reason = why (refusal, error, what would be done),
//	         .request = event.id of the request; event.outcome success/failure
//
// A request's id derives from (host, container, action, trigger), so a
// detector that handles the same threat twice publishes one request; a
// result's id derives from its request's id, so a collector that answers a
// redelivered request twice stores one result.
package response

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/subject"
)

// Action is what a response request asks a collector to do to a container
// (whalewatch.response.action on the wire).
type Action string

// Actions a collector carries out.
const (
	Pause      Action = "pause"      // freeze every process (docker pause)
	Unpause           = "unpause"    // undo pause
	Stop              = "stop"       // SIGTERM, then SIGKILL after the collector's stop timeout
	Kill              = "kill"       // SIGKILL
	Disconnect        = "disconnect" // disconnect from every network (the container keeps running)
	LimitCPU          = "limit_cpu"  // cap CPU at Request.CPUs cores (docker update --cpus)
)

// Actions lists every action, in a stable order.
var Actions = []Action{Pause, Unpause, Stop, Kill, Disconnect, LimitCPU}

// ValidAction reports whether a is a known action.
func ValidAction(a Action) bool {
	for _, k := range Actions {
		if k == a {
			return true
		}
	}
	return false
}

// Status is how a collector answered a request (whalewatch.response.status
// on the wire).
type Status string

// Statuses of a result.
const (
	StatusDone    Status = "done"    // the container is in the requested state (perhaps already was)
	StatusRefused        = "refused" // not acted on: protected, whalewatch's own, unknown, expired, invalid
	StatusFailed         = "failed"  // the engine returned an error; reason holds it
	StatusDryRun         = "dry_run" // dry-run: nothing done; reason says what would have been
)

// Bounds of Request.CPUs (Docker accepts at least 0.01 cores).
const (
	MinCPUs = 0.01
	MaxCPUs = 1024.0
)

// Request is what a response request asks.
type Request struct {
	Host        string  // host.name of the collector that must act (required)
	ContainerID string  // full 64-hex container id, never a name (required)
	Action      Action  // one of Actions (required)
	CPUs        float64 // limit_cpu: the cap in cores, MinCPUs..MaxCPUs
	DryRun      bool    // only report what would be done, whatever the collector's mode
	Reason      string  // why it is asked, e.g. the threat's rule name
	Trigger     string  // event.id of the threat behind it; empty for a manual request
	// Container is copied into the request for readers (container.name,
	// labels); the collector acts on ContainerID alone. Optional.
	Container *event.Container
	// Time is when it was requested; zero means now. A collector refuses a
	// request older than its -response-max-age.
	Time time.Time
}

// Validate checks r.
func (r Request) Validate() error {
	var errs []error
	if r.Host == "" {
		errs = append(errs, errors.New("host missing"))
	}
	if r.ContainerID == "" {
		errs = append(errs, errors.New("container id missing"))
	} else if !fullID(r.ContainerID) {
		// A name or short id could resolve to another container than the
		// one the threat was about.
		errs = append(errs, fmt.Errorf("container id %q is not a full 64-hex id", event.Truncate(r.ContainerID, 80)))
	}
	if !ValidAction(r.Action) {
		errs = append(errs, fmt.Errorf("unknown action %q", event.Truncate(string(r.Action), 64)))
	}
	if r.Action == LimitCPU && (math.IsNaN(r.CPUs) || r.CPUs < MinCPUs || r.CPUs > MaxCPUs) {
		errs = append(errs, fmt.Errorf("limit_cpu needs cpus between %g and %g, got %g", MinCPUs, MaxCPUs, r.CPUs))
	}
	return errors.Join(errs...)
}

// NewRequest returns the request document for r, bounded and valid, to be
// published on RequestSubject. Its event.id is DeriveID("response-request",
// host, container id, action, trigger) when Trigger is set (so handling one
// threat twice yields one request), random otherwise.
func NewRequest(r Request) (*event.Event, error) {
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("response request: %w", err)
	}
	at := r.Time
	if at.IsZero() {
		at = time.Now()
	}
	id := event.NewID()
	if r.Trigger != "" {
		id = event.DeriveID("response-request", r.Host, r.ContainerID, string(r.Action), r.Trigger)
	}
	ctr := &event.Container{ID: r.ContainerID}
	if r.Container != nil {
		c := *r.Container
		c.ID = r.ContainerID
		ctr = &c
	}
	mode := ""
	if r.DryRun {
		mode = " (dry run)"
	}
	e := &event.Event{
		Timestamp: at.UTC(),
		Message:   fmt.Sprintf("response requested%s: %s container %s on host %s: %s", mode, r.Action, containerName(ctr), r.Host, r.Reason),
		Event: event.Meta{
			ID:       id,
			Kind:     event.KindEvent,
			Category: []string{"process"},
			Type:     []string{"info"},
			Action:   string(r.Action),
			Dataset:  event.DatasetResponse,
			Module:   event.Module,
			Created:  time.Now().UTC(),
		},
		Host:      event.Host{Name: r.Host},
		Container: ctr,
		Whalewatch: event.Whalewatch{
			SchemaVersion: event.SchemaVersion,
			Trigger:       r.Trigger,
			Response:      &event.Response{Action: string(r.Action), DryRun: r.DryRun, Reason: r.Reason, CPUs: cpus(r)},
		},
	}
	e.Bound()
	return e, nil
}

func fullID(id string) bool {
	if len(id) != 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func cpus(r Request) float64 {
	if r.Action == LimitCPU {
		return r.CPUs
	}
	return 0
}

// RequestSubject is the subject request e is published on.
func RequestSubject(e *event.Event) string {
	return subject.ActionRequest(e.Host.Name, containerID(e))
}

// ResultSubject is the subject result e is published on.
func ResultSubject(e *event.Event) string {
	return subject.ActionResult(e.Host.Name, containerID(e))
}

func containerID(e *event.Event) string {
	if e.Container != nil {
		return e.Container.ID
	}
	return ""
}

// ParseRequest reads a request document. The error says why e is not a valid
// request; a collector answers such a document with a refused result.
func ParseRequest(e *event.Event) (Request, error) {
	if e.Event.Dataset != event.DatasetResponse || e.Whalewatch.Response == nil {
		return Request{}, errors.New("not a response request (event.dataset or whalewatch.response missing)")
	}
	resp := e.Whalewatch.Response
	if resp.Status != "" {
		return Request{}, errors.New("a result, not a request")
	}
	r := Request{
		Host:        e.Host.Name,
		ContainerID: containerID(e),
		Action:      Action(resp.Action),
		CPUs:        resp.CPUs,
		DryRun:      resp.DryRun,
		Reason:      resp.Reason,
		Trigger:     e.Whalewatch.Trigger,
		Container:   e.Container,
		Time:        e.Timestamp,
	}
	if err := r.Validate(); err != nil {
		return Request{}, err
	}
	return r, nil
}

// NewResult returns the result of request req: status is one of the Status
// constants, reason says why (the refusal, the engine's error, what a dry run
// would have done, or that nothing was left to do). ctr is container.* as the
// collector saw it (nil: the request's). The id derives from the request's,
// so answering a redelivered request again stores one result.
func NewResult(req *event.Event, status Status, reason string, ctr *event.Container, now time.Time) *event.Event {
	action := ""
	var cpus float64
	dry := false
	if r := req.Whalewatch.Response; r != nil {
		action, cpus, dry = r.Action, r.CPUs, r.DryRun
	}
	if ctr == nil {
		ctr = req.Container
	}
	if ctr == nil {
		ctr = &event.Container{}
	}
	outcome, typ := "success", []string{"info"}
	switch status {
	case StatusDone:
		typ = []string{"change"}
	case StatusFailed, StatusRefused:
		outcome = "failure"
	}
	e := &event.Event{
		Timestamp: now.UTC(),
		Message:   fmt.Sprintf("response %s: %s container %s on host %s: %s", status, action, containerName(ctr), req.Host.Name, reason),
		Event: event.Meta{
			ID:       event.DeriveID("response-result", req.Event.ID),
			Kind:     event.KindEvent,
			Category: []string{"process"},
			Type:     typ,
			Action:   action,
			Dataset:  event.DatasetResponse,
			Module:   event.Module,
			Outcome:  outcome,
			Created:  now.UTC(),
		},
		Host:      req.Host,
		Container: ctr,
		Whalewatch: event.Whalewatch{
			SchemaVersion: event.SchemaVersion,
			Trigger:       req.Whalewatch.Trigger,
			Response: &event.Response{
				Action: action,
				Status: string(status),
				DryRun: dry || status == StatusDryRun,
				Reason: reason,
				Target: req.Event.ID,
				CPUs:   cpus,
			},
		},
	}
	e.Bound()
	return e
}

func containerName(c *event.Container) string {
	if c.Name != "" {
		return c.Name
	}
	if len(c.ID) > 12 {
		return c.ID[:12]
	}
	return c.ID
}
