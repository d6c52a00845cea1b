package notifier

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"time"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/services/notifier/internal/gate"
	"github.com/whalewatch/whalewatch/services/notifier/internal/render"
)

// Noise control, per destination and replica:
//
//   - Group: the threats of one rule on one container within Window become
//     the first threat's message plus a count. The Web API updates the first
//     message (chat.update) when the window closes; other destinations get
//     one group message then.
//   - Budget: at most Budget posts a minute (a token bucket holding a
//     quarter of it, so a burst gets a few posts and then a digest), shared
//     by the replicas through NATS KV. High
//     and critical threats are always posted, budget or not; lower ones over
//     the budget, and any threat older than the maximum age, go into the
//     digest, posted every DigestEvery when it is not empty.
//
// Every threat ends up in exactly one of: an alert message, a group count,
// a digest count. Groups and digests are per replica and live in memory: a
// replica that crashes loses the counts of its open groups and digest (never
// an alert of its own).

// aggConfig configures an aggregator.
type aggConfig struct {
	Window      time.Duration // 0: no grouping
	Budget      int           // posts a minute; 0: no budget
	DigestEvery time.Duration
	Updates     bool // the destination can update its messages
	// Shared, when set, is the budget of every replica together; the local
	// one stands in when it cannot be reached.
	Shared *gate.Budget
}

type aggregator struct {
	cfg aggConfig

	mu         sync.Mutex
	tokens     float64
	refilled   time.Time
	groups     map[string]*group
	digest     digestAcc
	lastDigest time.Time
}

type group struct {
	first   *event.Event
	start   time.Time
	more    int
	ref     string // the Web API message to update
	pending bool   // its first message is being posted
	shown   int    // the count its message shows (Web API)
	shownAt time.Time
}

// updateEvery is how often a Web API group's message is updated while its
// window is open, when its count changed.
func (a *aggregator) updateEvery() time.Duration { return min(10*time.Second, a.cfg.Window/2) }

func newAggregator(cfg aggConfig, now time.Time) *aggregator {
	return &aggregator{cfg: cfg, tokens: burstOf(cfg.Budget), refilled: now, groups: map[string]*group{}, lastDigest: now}
}

func burstOf(budget int) float64 { return max(1, float64(budget)/4) }

func groupKey(e *event.Event) string {
	rule, cid := "", e.Host.Name
	if e.Rule != nil {
		rule = e.Rule.ID
	}
	if e.Container != nil && e.Container.ID != "" {
		cid = e.Container.ID
	}
	return rule + "\x00" + cid
}

// take takes a post from the budget.
func (a *aggregator) take(now time.Time) bool {
	if a.cfg.Budget <= 0 {
		return true
	}
	if a.cfg.Shared != nil {
		if ok, err := a.cfg.Shared.Take(context.Background(), now); err == nil {
			return ok
		}
	}
	a.tokens = min(burstOf(a.cfg.Budget), a.tokens+now.Sub(a.refilled).Minutes()*float64(a.cfg.Budget))
	a.refilled = now
	if a.tokens >= 1 {
		a.tokens--
		return true
	}
	return false
}

// Admission of a threat.
const (
	admitPost    = iota // post it as an alert
	admitGrouped        // counted in an open group
	admitDigest         // counted in the digest
)

// admit decides what becomes of threat e.
func (a *aggregator) admit(e *event.Event, now time.Time) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	key := groupKey(e)
	if a.cfg.Window > 0 {
		if g, ok := a.groups[key]; ok && now.Sub(g.start) < a.cfg.Window {
			g.more++
			return admitGrouped
		}
	}
	if e.Whalewatch.Severity.Score() >= event.SeverityHigh.Score() || a.take(now) {
		if a.cfg.Window > 0 {
			a.groups[key] = &group{first: e, start: now, pending: true, shownAt: now}
		}
		return admitPost
	}
	a.digest.add(e, 1, false, now)
	return admitDigest
}

// stale counts a threat too old to post one by one.
func (a *aggregator) stale(e *event.Event, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.digest.add(e, 1, true, now)
}

// posted records that e, admitted for posting, was posted as ref.
func (a *aggregator) posted(e *event.Event, ref string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if g, ok := a.groups[groupKey(e)]; ok && g.first == e {
		g.pending, g.ref = false, ref
	}
}

// abandon forgets e, admitted for posting but not posted by this replica
// (it failed, or another replica posted it); its group's repeats go to the
// digest, so they stay counted.
func (a *aggregator) abandon(e *event.Event, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	key := groupKey(e)
	if g, ok := a.groups[key]; ok && g.first == e {
		delete(a.groups, key)
		if g.more > 0 {
			a.digest.add(g.first, g.more, false, now)
		}
	}
}

// due returns the notices whose time has come: group messages (or updates)
// of closed windows, and the digest. Each must be handed back to settle.
func (a *aggregator) due(now time.Time) []pendingNotice {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []pendingNotice
	for key, g := range a.groups {
		if g.pending {
			continue
		}
		if now.Sub(g.start) < a.cfg.Window {
			if a.cfg.Updates && g.ref != "" && g.more != g.shown && now.Sub(g.shownAt) >= a.updateEvery() {
				// An interim count; the window's close sends the final one.
				g.shown, g.shownAt = g.more, now
				out = append(out, pendingNotice{ref: g.ref, interim: true, n: Notice{Kind: render.KindAlert, Event: g.first, Count: g.more + 1, Since: g.start}})
			}
			continue
		}
		delete(a.groups, key)
		if g.more == 0 {
			continue
		}
		switch {
		case a.cfg.Updates && g.ref != "":
			out = append(out, pendingNotice{ref: g.ref, n: Notice{Kind: render.KindAlert, Event: g.first, Count: g.more + 1, Since: g.start}})
		case g.first.Whalewatch.Severity.Score() >= event.SeverityHigh.Score() || a.take(now):
			out = append(out, pendingNotice{n: Notice{Kind: render.KindGroup, Event: g.first, Count: g.more, Since: g.start, Window: a.cfg.Window}})
		default:
			a.digest.add(g.first, g.more, false, now)
		}
	}
	if a.digest.count > 0 && now.Sub(a.lastDigest) >= a.cfg.DigestEvery {
		out = append(out, pendingNotice{n: Notice{Kind: render.KindDigest, Digest: a.digest.stats()}, digest: a.digest})
		a.digest = digestAcc{}
		a.lastDigest = now
	}
	return out
}

// failed takes back a due notice that could not be delivered: its threats
// go into the next digest.
func (a *aggregator) failed(p pendingNotice, now time.Time) {
	if p.interim {
		return // the group still counts them
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	switch p.n.Kind {
	case render.KindDigest:
		a.digest.merge(p.digest)
	case render.KindGroup:
		a.digest.add(p.n.Event, p.n.Count, false, now)
	default: // an update of a posted alert: its first threat is posted already
		a.digest.add(p.n.Event, p.n.Count-1, false, now)
	}
}

// pendingNotice is a notice the aggregator made, and what it came from.
type pendingNotice struct {
	n       Notice
	ref     string    // update this message instead of posting
	interim bool      // an update while the group's window is open
	digest  digestAcc // the digest's accumulator, to take back on failure
}

// Bounds of a digest's memory: beyond them, names are not tracked (the
// counts stay exact).
const (
	maxDigestContainers = 10000
	maxDigestNames      = 1000
)

// digestAcc accumulates the threats of a digest.
type digestAcc struct {
	count, staleN int
	bySeverity    map[event.Severity]int
	containers    map[string]bool
	rules, images map[string]int
	from, to      time.Time
}

func (d *digestAcc) add(e *event.Event, n int, stale bool, now time.Time) {
	if n <= 0 {
		return
	}
	if d.bySeverity == nil {
		d.bySeverity, d.containers, d.rules, d.images = map[event.Severity]int{}, map[string]bool{}, map[string]int{}, map[string]int{}
		d.from = now
	}
	d.count += n
	if stale {
		d.staleN += n
	}
	d.bySeverity[e.Whalewatch.Severity] += n
	if e.Container != nil {
		if len(d.containers) < maxDigestContainers {
			d.containers[e.Container.ID] = true
		}
		if _, ok := d.images[e.Container.Image.Name]; ok || len(d.images) < maxDigestNames {
			d.images[e.Container.Image.Name] += n
		}
	}
	if e.Rule != nil {
		if _, ok := d.rules[e.Rule.ID]; ok || len(d.rules) < maxDigestNames {
			d.rules[e.Rule.ID] += n
		}
	}
	if e.Timestamp.Before(d.from) && !e.Timestamp.IsZero() {
		d.from = e.Timestamp
	}
	if now.After(d.to) {
		d.to = now
	}
}

func (d *digestAcc) merge(o digestAcc) {
	if o.count == 0 {
		return
	}
	if d.bySeverity == nil {
		*d = o
		return
	}
	d.count += o.count
	d.staleN += o.staleN
	for k, v := range o.bySeverity {
		d.bySeverity[k] += v
	}
	for k := range o.containers {
		d.containers[k] = true
	}
	for k, v := range o.rules {
		d.rules[k] += v
	}
	for k, v := range o.images {
		d.images[k] += v
	}
	if o.from.Before(d.from) {
		d.from = o.from
	}
	if o.to.After(d.to) {
		d.to = o.to
	}
}

func (d *digestAcc) stats() render.DigestStats {
	return render.DigestStats{
		Count: d.count, BySeverity: d.bySeverity, Containers: len(d.containers),
		Rules: top(d.rules), Images: top(d.images), Stale: d.staleN, From: d.from, To: d.to,
	}
}

// top is names by count, most first, at most 5.
func top(m map[string]int) []render.Tally {
	out := make([]render.Tally, 0, len(m))
	for k, v := range m {
		out = append(out, render.Tally{Name: k, Count: v})
	}
	slices.SortFunc(out, func(a, b render.Tally) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.Name, b.Name))
	})
	return out[:min(len(out), 5)]
}
