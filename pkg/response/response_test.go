package response

import (
	"strings"
	"testing"
	"time"

	"github.com/whalewatch/whalewatch/pkg/event"
)

const cid = "3f4e5a6b7c8d9e0f3f4e5a6b7c8d9e0f3f4e5a6b7c8d9e0f3f4e5a6b7c8d9e0f"

func TestNewRequestRoundTrip(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 11, 26, 19, 40, 0, 0, time.UTC)
	e, err := NewRequest(Request{
		Host: "docker.1", ContainerID: cid, Action: LimitCPU, CPUs: 0.5,
		Reason: "cryptominer", Trigger: "t1", Time: at,
		Container: &event.Container{Name: "web"},
	})
	if err != nil {
		t.Fatal(err)
	}
	data, err := event.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	back, err := event.Decode(data)
	if err != nil {
		t.Fatalf("a request is a valid document: %v", err)
	}
	if got := RequestSubject(back); got != "whalewatch.actions.request.docker_1."+cid {
		t.Errorf("subject %q", got)
	}
	r, err := ParseRequest(back)
	if err != nil {
		t.Fatal(err)
	}
	if r.Action != LimitCPU || r.CPUs != 0.5 || r.ContainerID != cid || r.Trigger != "t1" || !r.Time.Equal(at) || r.DryRun {
		t.Errorf("parsed %+v", r)
	}
	if back.Event.Action != LimitCPU || back.Event.Dataset != event.DatasetResponse || back.Container.Name != "web" {
		t.Errorf("event %+v", back.Event)
	}
	again, _ := NewRequest(Request{Host: "docker.1", ContainerID: cid, Action: LimitCPU, CPUs: 0.5, Trigger: "t1"})
	if again.Event.ID != e.Event.ID {
		t.Error("the same threat yields the same request id")
	}
	manual, _ := NewRequest(Request{Host: "docker.1", ContainerID: cid, Action: Pause})
	manual2, _ := NewRequest(Request{Host: "docker.1", ContainerID: cid, Action: Pause})
	if manual.Event.ID == manual2.Event.ID {
		t.Error("requests without a trigger get fresh ids")
	}
	if manual.Whalewatch.Response.CPUs != 0 {
		t.Error("cpus only on limit_cpu")
	}
}

func TestNewRequestRejects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		r    Request
		want string
	}{
		{"no host", Request{ContainerID: cid, Action: Kill}, "host missing"},
		{"no container", Request{Host: "h", Action: Kill}, "container id missing"},
		{"short id", Request{Host: "h", ContainerID: cid[:12], Action: Kill}, "not a full 64-hex id"},
		{"name", Request{Host: "h", ContainerID: "web", Action: Kill}, "not a full 64-hex id"},
		{"unknown action", Request{Host: "h", ContainerID: cid, Action: "rm -rf"}, `unknown action "rm -rf"`},
		{"no cpus", Request{Host: "h", ContainerID: cid, Action: LimitCPU}, "limit_cpu needs cpus"},
		{"too many cpus", Request{Host: "h", ContainerID: cid, Action: LimitCPU, CPUs: 1e9}, "limit_cpu needs cpus"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := NewRequest(tt.r)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestParseRequestRejects(t *testing.T) {
	t.Parallel()
	req, _ := NewRequest(Request{Host: "h", ContainerID: cid, Action: Pause})
	res := NewResult(req, StatusDone, "", nil, time.Now())
	threat := &event.Event{Event: event.Meta{Kind: event.KindAlert, Dataset: event.DatasetThreat}}
	for name, e := range map[string]*event.Event{"result": res, "threat": threat} {
		if _, err := ParseRequest(e); err == nil {
			t.Errorf("%s parsed as a request", name)
		}
	}
}

func TestNewResult(t *testing.T) {
	t.Parallel()
	req, _ := NewRequest(Request{Host: "h", ContainerID: cid, Action: Pause, DryRun: true, Trigger: "t"})
	now := time.Now()
	tests := []struct {
		status       Status
		outcome, typ string
	}{
		{StatusDone, "success", "change"},
		{StatusDryRun, "success", "info"},
		{StatusRefused, "failure", "info"},
		{StatusFailed, "failure", "info"},
	}
	for _, tt := range tests {
		res := NewResult(req, tt.status, "because", &event.Container{ID: cid, Name: "web"}, now)
		if err := res.Validate(); err != nil {
			t.Fatal(err)
		}
		r := res.Whalewatch.Response
		if Status(r.Status) != tt.status || r.Target != req.Event.ID || Action(r.Action) != Pause || !r.DryRun || r.Reason != "because" {
			t.Errorf("%s: response %+v", tt.status, r)
		}
		if res.Event.Outcome != tt.outcome || res.Event.Type[0] != tt.typ || res.Whalewatch.Trigger != "t" {
			t.Errorf("%s: meta %+v", tt.status, res.Event)
		}
		if res.Event.ID != event.DeriveID("response-result", req.Event.ID) {
			t.Errorf("%s: result id must derive from the request's", tt.status)
		}
		if ResultSubject(res) != "whalewatch.actions.result.h."+cid {
			t.Errorf("%s: subject %s", tt.status, ResultSubject(res))
		}
	}
}

// FuzzParseRequest: whatever arrives on a request subject, answering it
// neither panics nor produces an invalid result.
func FuzzParseRequest(f *testing.F) {
	req, _ := NewRequest(Request{Host: "h", ContainerID: cid, Action: LimitCPU, CPUs: 2, Reason: "r", Trigger: "t"})
	data, _ := event.Marshal(req)
	f.Add(data)
	f.Add([]byte(`{"event":{"id":"x","kind":"event","dataset":"whalewatch.response"},"whalewatch":{"schema_version":"1.0","response":{"action":"limit_cpu","cpus":-1e308}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := event.Decode(data)
		if err != nil {
			return
		}
		r, err := ParseRequest(e)
		if err == nil && r.Validate() != nil {
			t.Fatal("ParseRequest accepted an invalid request")
		}
		if e.Container == nil {
			e.Container = &event.Container{}
		}
		res := NewResult(e, StatusRefused, "x", nil, time.Now())
		if err := res.Validate(); err != nil && e.Host.Name != "" {
			t.Fatalf("invalid result: %v", err)
		}
	})
}
