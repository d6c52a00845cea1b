package state

import (
	"time"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// Incidents.
//
// Every threat on a container joins the container's open incident: one is
// open while threats keep coming less than IncidentWindow apart (event time).
// So a chain on one container (a binary dropped, executed, connecting out, a
// scan) is one incident whatever rules it raises, and so are the repeats of
// one rule. The first threat of each rule in an incident is published at
// once; a repeat of a rule already in the incident is folded into it (counted,
// not published): one scan, one brute force, one miner is one alert, and the
// next threat published in the incident carries the count.
//
// Incidents live with the container's windows: bounded by MaxContainers,
// forgotten when it dies, goes idle or its partition moves to another replica
// (each container is consumed by one replica at a time, so that replica's
// memory is the whole truth), and untouched by rule reloads. Threats without a
// container (host-scoped) have one incident per host, in a bounded map.

// maxIncidentRules bounds the rules listed in an incident.
const maxIncidentRules = 32

// maxHostIncidents bounds the host-scoped incidents kept.
const maxHostIncidents = 1024

type incident struct {
	id          string
	first, last time.Time
	count       int
	rules       []string
	byRule      map[string]int
}

// Incident assigns a threat of rule (id threatID, at event time at) on
// containerID of host to its incident and reports whether to publish it: false
// when it folds into the incident as a repeat of a rule already raised there.
// With IncidentWindow 0 every threat is published, alone.
func (r *Recorder) Incident(host, containerID, rule, threatID string, at time.Time) (event.Incident, bool) {
	if r.cfg.IncidentWindow <= 0 {
		return event.Incident{ID: event.DeriveID("incident", host, containerID, threatID), Count: 1, First: at, Rules: []string{rule}}, true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var slot **incident
	if containerID != "" {
		c := r.container(containerID, "", r.now())
		slot = &c.incident
	} else {
		if r.hostIncidents == nil {
			r.hostIncidents = map[string]*incident{}
		}
		inc := r.hostIncidents[host]
		if inc == nil && len(r.hostIncidents) >= maxHostIncidents {
			r.dropOldestHostIncident()
		}
		slot = &inc
		defer func() { r.hostIncidents[host] = *slot }()
	}
	inc := *slot
	if inc != nil && at.Before(inc.last) {
		at = inc.last // event time never goes backwards in an incident
	}
	if inc == nil || at.Sub(inc.last) > r.cfg.IncidentWindow {
		inc = &incident{id: event.DeriveID("incident", host, containerID, threatID), first: at, byRule: map[string]int{}}
		*slot = inc
	}
	inc.last = at
	inc.count++
	seen := inc.byRule[rule] > 0
	if !seen && len(inc.byRule) < maxIncidentRules {
		inc.rules = append(inc.rules, rule)
	}
	if seen || len(inc.byRule) < maxIncidentRules {
		inc.byRule[rule]++
	}
	return event.Incident{ID: inc.id, Count: inc.count, First: inc.first, Rules: append([]string(nil), inc.rules...)}, !seen
}

// Unpublished undoes what Incident recorded for a threat of rule that could
// not be published, so that its redelivery is published rather than folded.
func (r *Recorder) Unpublished(host, containerID, rule string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var inc *incident
	if containerID != "" {
		if el, ok := r.containers[containerID]; ok {
			inc = el.Value.(*container).incident
		}
	} else {
		inc = r.hostIncidents[host]
	}
	if inc == nil || inc.byRule[rule] == 0 {
		return
	}
	inc.count--
	if inc.byRule[rule]--; inc.byRule[rule] == 0 {
		delete(inc.byRule, rule)
		for i, x := range inc.rules {
			if x == rule {
				inc.rules = append(inc.rules[:i], inc.rules[i+1:]...)
				break
			}
		}
	}
}

func (r *Recorder) dropOldestHostIncident() {
	oldest, at := "", time.Time{}
	for h, inc := range r.hostIncidents {
		if oldest == "" || inc.last.Before(at) {
			oldest, at = h, inc.last
		}
	}
	delete(r.hostIncidents, oldest)
}
