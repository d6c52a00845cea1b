// Package gate holds a destination back when it asked for less traffic: a
// 429's Retry-After, or exponential back-off after 5xx answers and network
// errors. Holds are shared by every replica through a NATS KV bucket (one key
// per destination), because Slack rate-limits per webhook and per channel,
// not per client: a replica that ignored another's 429 would be refused too,
// and would prolong the limit.
//
// While a destination is recovering from failures, one request at a time
// (per replica) probes it; the others wait for the probe's outcome, so an
// outage costs one request per back-off step, not one per queued alert.
package gate

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Bucket is the KV bucket of destination holds.
const Bucket = "whalewatch_notifier_holds"

// Limits of holds.
const (
	// DefaultRetryAfter is the hold of a 429 without a usable Retry-After.
	DefaultRetryAfter = 30 * time.Second
	// MaxHold caps any hold, so that a bogus Retry-After cannot stall alerts
	// for long.
	MaxHold = 5 * time.Minute
	// firstBackoff and maxBackoff bound the back-off after failures.
	firstBackoff = 500 * time.Millisecond
	maxBackoff   = 30 * time.Second
)

// ParseRetryAfter reads a Retry-After header: delay seconds (Slack sends an
// integer; a fraction is accepted) or an HTTP date. A missing or unusable
// value gives DefaultRetryAfter. The result is within [0, MaxHold].
func ParseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return DefaultRetryAfter
	}
	if f, err := strconv.ParseFloat(v, 64); err == nil {
		if math.IsNaN(f) || f < 0 {
			return DefaultRetryAfter
		}
		if f > MaxHold.Seconds() {
			return MaxHold
		}
		return time.Duration(f * float64(time.Second))
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(t.Sub(now), 0), MaxHold)
	}
	return DefaultRetryAfter
}

// Store shares holds between replicas.
type Store struct{ kv jetstream.KeyValue }

// KeyValueManager is the part of JetStream OpenStore needs.
type KeyValueManager interface {
	KeyValue(ctx context.Context, bucket string) (jetstream.KeyValue, error)
	CreateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error)
}

// OpenStore opens the holds bucket, creating it when it does not exist. Its
// keys expire after MaxHold: a hold is never longer.
func OpenStore(ctx context.Context, js KeyValueManager, replicas int) (*Store, error) {
	kv, err := js.KeyValue(ctx, Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      Bucket,
			Description: "until when each whalewatch notifier destination is held back (rate limit, back-off)",
			TTL:         MaxHold + time.Minute,
			History:     1,
			Storage:     jetstream.MemoryStorage,
			Replicas:    max(replicas, 1),
		})
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, Bucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("opening KV bucket %s: %w", Bucket, err)
	}
	return &Store{kv: kv}, nil
}

// Gate is one destination's hold.
type Gate struct {
	name  string
	store *Store // nil: holds stay in this process
	now   func() time.Time

	mu      sync.Mutex
	until   time.Time
	fails   int
	probing bool
}

// New returns the gate of destination name (a KV key: [-_a-zA-Z0-9]),
// shared through store when it is not nil.
func New(name string, store *Store) *Gate {
	return &Gate{name: name, store: store, now: time.Now}
}

// Watch follows the holds other replicas store until ctx ends.
func (g *Gate) Watch(ctx context.Context) error {
	if g.store == nil {
		return nil
	}
	w, err := g.store.kv.Watch(ctx, g.name)
	if err != nil {
		return fmt.Errorf("watching hold of %s: %w", g.name, err)
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return nil
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			if ms, err := strconv.ParseInt(string(e.Value()), 10, 64); err == nil {
				g.extend(time.UnixMilli(ms))
			}
		}
	}
}

func (g *Gate) extend(until time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if until.After(g.until) {
		g.until = until
	}
}

// Acquire asks to send one request now. It returns 0 when the caller may
// send, and must then report the outcome with Success, RateLimited or
// Failed; otherwise it returns how long to wait before asking again. It
// reads the shared hold first (one KV get: requests are few, and a hold
// another replica stored a moment ago must count), and falls back on what
// Watch last saw when NATS does not answer.
func (g *Gate) Acquire(ctx context.Context) time.Duration {
	if g.store != nil {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		if e, err := g.store.kv.Get(ctx, g.name); err == nil {
			if ms, err := strconv.ParseInt(string(e.Value()), 10, 64); err == nil {
				g.extend(time.UnixMilli(ms))
			}
		}
		cancel()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if wait := g.until.Sub(g.now()); wait > 0 {
		return wait
	}
	if g.fails > 0 {
		if g.probing {
			return 250 * time.Millisecond // the probe's outcome decides
		}
		g.probing = true
	}
	return 0
}

// Success reports that a request went through: the destination is healthy.
func (g *Gate) Success() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.fails, g.probing = 0, false
}

// Cancelled reports that an acquired request was not sent after all.
func (g *Gate) Cancelled() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.probing = false
}

// RateLimited holds the destination for d, on every replica.
func (g *Gate) RateLimited(ctx context.Context, d time.Duration) time.Duration {
	d = min(max(d, 0), MaxHold)
	g.mu.Lock()
	g.probing = false
	until := g.now().Add(d)
	if until.After(g.until) {
		g.until = until
	}
	g.mu.Unlock()
	g.share(ctx, until)
	return d
}

// Failed backs the destination off after a 5xx or network error: 500 ms,
// doubling with each failure in a row, at most 30 s. It returns the hold.
func (g *Gate) Failed(ctx context.Context) time.Duration {
	g.mu.Lock()
	g.probing = false
	g.fails++
	d := firstBackoff << min(g.fails-1, 10)
	d = min(d, maxBackoff)
	until := g.now().Add(d)
	if until.After(g.until) {
		g.until = until
	}
	g.mu.Unlock()
	g.share(ctx, until)
	return d
}

// Until is when the current hold ends.
func (g *Gate) Until() time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.until
}

func (g *Gate) share(ctx context.Context, until time.Time) {
	if g.store == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	// Best effort: the hold applies here anyway; the others learn of the
	// next 429 or failure themselves.
	_, _ = g.store.kv.Put(ctx, g.name, []byte(strconv.FormatInt(until.UnixMilli(), 10)))
}

// Budget is a destination's post budget, a token bucket shared by every
// replica through the holds bucket (key "budget-<destination>", value
// "<tokens> <unix-ms>", changed by compare-and-set). Once it is empty a
// replica asks again only when the next token is due, so an exhausted
// budget costs no NATS round trip per threat.
type Budget struct {
	store         *Store
	key           string
	perMin, burst float64

	mu         sync.Mutex
	emptyUntil time.Time
}

// NewBudget returns the shared budget of destination name: perMin posts a
// minute, at most burst at once.
func NewBudget(name string, store *Store, perMin, burst float64) *Budget {
	return &Budget{store: store, key: "budget-" + name, perMin: perMin, burst: burst}
}

// Take takes one post from the budget and reports whether there was one.
// An error means the bucket could not be read or written; the caller
// decides without it.
func (b *Budget) Take(ctx context.Context, now time.Time) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if now.Before(b.emptyUntil) {
		return false, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	for range 5 { // compare-and-set against the other replicas
		tokens, rev := b.burst, uint64(0)
		e, err := b.store.kv.Get(ctx, b.key)
		switch {
		case err == nil:
			rev = e.Revision()
			if t, at, ok := parseBudget(e.Value()); ok {
				tokens = min(b.burst, t+now.Sub(at).Minutes()*b.perMin)
			}
		case errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted):
		default:
			return false, fmt.Errorf("reading budget: %w", err)
		}
		if tokens < 1 {
			b.emptyUntil = now.Add(time.Duration((1 - tokens) / b.perMin * float64(time.Minute)))
			return false, nil
		}
		v := []byte(strconv.FormatFloat(tokens-1, 'f', 3, 64) + " " + strconv.FormatInt(now.UnixMilli(), 10))
		if rev == 0 {
			_, err = b.store.kv.Create(ctx, b.key, v)
		} else {
			_, err = b.store.kv.Update(ctx, b.key, v, rev)
		}
		if err == nil {
			return true, nil
		}
		var apiErr *jetstream.APIError
		if !errors.Is(err, jetstream.ErrKeyExists) && !(errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence) {
			return false, fmt.Errorf("writing budget: %w", err)
		}
	}
	return false, nil // heavy contention: the others are posting
}

func parseBudget(v []byte) (float64, time.Time, bool) {
	t, ms, ok := strings.Cut(string(v), " ")
	if !ok {
		return 0, time.Time{}, false
	}
	tokens, err1 := strconv.ParseFloat(t, 64)
	at, err2 := strconv.ParseInt(ms, 10, 64)
	if err1 != nil || err2 != nil {
		return 0, time.Time{}, false
	}
	return tokens, time.UnixMilli(at), true
}
