// Package claim makes an effect happen once across replicas and redeliveries:
// posting an alert, running a response. Before the effect a worker claims the
// effect's key in a NATS KV bucket with an atomic create; only the winner
// does the effect, then marks the key done. Everyone else learns that the
// effect is done (ack the message) or in progress elsewhere (retry after the
// claim's lease).
//
// The guarantee and its bound:
//
//   - A claim is stored before Claim returns Won, with the bucket's replicas
//     (a KV create is a JetStream publish acknowledged by the stream's
//     quorum). A claim that cannot be stored is an error: the caller retries
//     later and never does the effect without one.
//   - A key marked Done is never claimed again while the bucket remembers it
//     (its TTL, part of the bucket's configuration, set once when the bucket
//     is created; Open does not change it).
//   - A worker that dies between its effect and Done leaves a claim whose
//     lease runs out; the next claimant takes it over and repeats the effect.
//     So a crash repeats at most the effects in flight at that moment (one
//     per worker that handles one message at a time), after at most Lease.
//
// On a NATS cluster a KV write may be stored although its answer is lost (the
// bucket's stream leader died, or a new one was being elected): Claim and
// Done retry each write with a short deadline until the caller's context
// ends, and read the key back to learn whether an unanswered write landed,
// so a leader change delays a claim but neither loses it nor makes its own
// earlier attempt look like another worker's claim.
//
// Keys come from the wire and are hashed when they are not plain KV keys
// (see Key).
package claim

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/whalewatch/whalewatch/pkg/bus"
)

// Config describes a claim store.
type Config struct {
	// Bucket is the KV bucket's name.
	Bucket      string
	Description string
	// TTL is how long a key is remembered, applied only when Open creates the
	// bucket: the TTL belongs to the bucket, so replicas started with other
	// values do not fight over it (change it with `nats kv edit`).
	TTL time.Duration
	// Replicas of the bucket when Open creates it (3 on a NATS cluster).
	Replicas int
	// Lease is how long a claim without Done keeps others away. It must
	// exceed the longest the effect can take (a request's timeout).
	Lease time.Duration
	// Prefix, when set, is put before every key unhashed, followed by a
	// '.': a namespace that NATS permissions can match with
	// `$KV.<bucket>.<prefix>.>` (the collector's host token). It must be a
	// valid KV key without '.', '*' or '>'.
	Prefix string
	// OnRetry (may be nil) sees each failed try of opening the bucket.
	OnRetry func(error)
	// Now is the clock of the leases (nil: time.Now); tests set it.
	Now func() time.Time
}

// State is what Claim found.
type State int

const (
	// Won: the caller holds the claim; do the effect, then Done (or Release
	// when it failed and may be retried by anyone).
	Won State = iota
	// Done: the effect happened already.
	Done
	// Held: another worker holds a claim whose lease has not run out; try
	// again after Claim.Wait.
	Held
)

func (s State) String() string {
	switch s {
	case Won:
		return "won"
	case Done:
		return "done"
	case Held:
		return "held"
	}
	return "unknown"
}

// Claim is the outcome of Store.Claim.
type Claim struct {
	State State
	Key   string
	// Until is when a Held claim's lease runs out.
	Until time.Time
	rev   uint64
}

// Wait is how long to wait before claiming a Held key again.
func (c Claim) Wait(now time.Time) time.Duration { return max(c.Until.Sub(now), 0) }

// KeyValueManager is the part of JetStream Open needs.
type KeyValueManager = bus.KeyValueManager

// Store is a claim store on one KV bucket.
type Store struct {
	kv     jetstream.KeyValue
	prefix string
	lease  time.Duration
	owner  string
	seq    atomic.Uint64 // makes every claim's value unique
	now    func() time.Time
}

// attemptTimeout bounds the first try of a KV request; each retry waits
// twice as long, up to maxAttemptTimeout. A request whose answer is lost
// (e.g. its stream leader died) is retried rather than waited on until the
// caller's deadline, and a slow cluster still gets the time it needs.
const (
	attemptTimeout    = 2 * time.Second
	maxAttemptTimeout = 8 * time.Second
)

// retryPause is the pause between two attempts of a request that failed
// for want of a stream leader.
const retryPause = 250 * time.Millisecond

// Open opens the bucket, creating it with cfg when it does not exist yet.
// An existing bucket is used as it is configured. A request left unanswered
// (a busy meta leader may lose its answer; the bucket is then read back) is
// retried with a growing deadline until ctx ends (bus.OpenKeyValue), so Open
// returns soon after NATS can answer.
func Open(ctx context.Context, js KeyValueManager, cfg Config) (*Store, error) {
	if cfg.Lease <= 0 {
		return nil, errors.New("claim lease must be positive")
	}
	kvCfg := jetstream.KeyValueConfig{
		Bucket:      cfg.Bucket,
		Description: cfg.Description,
		TTL:         cfg.TTL,
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    max(cfg.Replicas, 1),
	}
	if cfg.Prefix != "" && (!plainKey(cfg.Prefix, false) || len(cfg.Prefix) > 100) {
		return nil, fmt.Errorf("claim key prefix %q: want a KV key without '.'", cfg.Prefix)
	}
	prefix := ""
	if cfg.Prefix != "" {
		prefix = cfg.Prefix + "."
	}
	kv, err := bus.OpenKeyValue(ctx, js, kvCfg, cfg.OnRetry)
	if err != nil {
		return nil, fmt.Errorf("opening KV bucket %s: %w", cfg.Bucket, err)
	}
	var id [6]byte
	_, _ = rand.Read(id[:])
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	return &Store{kv: kv, prefix: prefix, lease: cfg.Lease, owner: hex.EncodeToString(id[:]), now: now}, nil
}

// Values stored under a key: "done <owner>-<n>", or "held <unix-ms>
// <owner>-<n>" while a claim's lease runs. Anything else (e.g. a timestamp written by an older
// ledger) counts as done.
const valueDone = "done"

// heldValue is a new claim's value, and when its lease ends.
func (s *Store) heldValue() ([]byte, time.Time) {
	until := s.now().Add(s.lease)
	return []byte("held " + strconv.FormatInt(until.UnixMilli(), 10) + " " + s.owner + "-" + strconv.FormatUint(s.seq.Add(1), 10)), until
}

// attempt calls f with a context bounded by attemptTimeout, again after
// retryPause while it fails with an error other than those final says are
// answers, until ctx ends; then it returns f's last error.
func attempt[T any](ctx context.Context, final func(error) bool, f func(ctx context.Context) (T, error)) (T, error) {
	for timeout := attemptTimeout; ; timeout = min(2*timeout, maxAttemptTimeout) {
		actx, cancel := context.WithTimeout(ctx, timeout)
		v, err := f(actx)
		cancel()
		if err == nil || final(err) || ctx.Err() != nil {
			return v, err
		}
		select {
		case <-ctx.Done():
			return v, err
		case <-time.After(retryPause):
		}
	}
}

// answered reports whether err is the server's answer about the key rather
// than a failure to reach it.
func answered(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyNotFound) ||
		errors.Is(err, jetstream.ErrKeyDeleted) || errors.As(err, &apiErr)
}

func (s *Store) get(ctx context.Context, k string) (jetstream.KeyValueEntry, error) {
	return attempt(ctx, answered, func(ctx context.Context) (jetstream.KeyValueEntry, error) { return s.kv.Get(ctx, k) })
}

// parse returns whether v is a claim in progress and when its lease ends.
func parse(v []byte) (held bool, until time.Time) {
	f := strings.Fields(string(v))
	if len(f) < 2 || f[0] != "held" {
		return false, time.Time{}
	}
	ms, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return false, time.Time{}
	}
	return true, time.UnixMilli(ms)
}

// Claim tries to claim key. An error means nothing is known: retry later,
// and do not do the effect. Writes whose answers are lost are retried until
// ctx ends.
func (s *Store) Claim(ctx context.Context, key string) (Claim, error) {
	k := s.prefix + Key(key)
	for range 3 { // the key may expire or be released between two calls
		v, until := s.heldValue()
		rev, err := attempt(ctx, answered, func(ctx context.Context) (uint64, error) { return s.kv.Create(ctx, k, v) })
		if err == nil {
			return s.won(ctx, k, rev, until)
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return Claim{}, fmt.Errorf("claiming %s: %w", k, err)
		}
		e, err := s.get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			continue
		}
		if err != nil {
			return Claim{}, fmt.Errorf("reading claim %s: %w", k, err)
		}
		if string(e.Value()) == string(v) { // an attempt whose answer was lost landed
			return s.won(ctx, k, e.Revision(), until)
		}
		held, until := parse(e.Value())
		if !held {
			return Claim{State: Done, Key: k}, nil
		}
		if until.After(s.now()) {
			return Claim{State: Held, Key: k, Until: until}, nil
		}
		// The holder's lease ran out (it died or hung): take the claim over,
		// unless someone else did so first.
		v, until = s.heldValue()
		rev, err = s.update(ctx, k, v, e.Revision())
		if err == nil {
			return s.won(ctx, k, rev, until)
		}
		if !isWrongRevision(err) {
			return Claim{}, fmt.Errorf("taking over claim %s: %w", k, err)
		}
	}
	return Claim{State: Held, Key: k, Until: s.now().Add(s.lease)}, nil
}

// won returns the won claim at revision rev, whose lease ends at until.
// The lease was set before the write, and the write's retries (a leader
// change, a slow cluster) may have used most of it: then another worker
// could take the claim over while the effect runs. So a claim with less
// than half its lease left is renewed first; if it was taken over
// meanwhile (its lease ran out), it is Held, and the effect is not done.
func (s *Store) won(ctx context.Context, k string, rev uint64, until time.Time) (Claim, error) {
	if until.Sub(s.now()) >= s.lease/2 {
		return Claim{State: Won, Key: k, rev: rev}, nil
	}
	v, until := s.heldValue()
	n, err := s.update(ctx, k, v, rev)
	switch {
	case err == nil:
		return Claim{State: Won, Key: k, rev: n}, nil
	case isWrongRevision(err):
		return Claim{State: Held, Key: k, Until: until}, nil
	}
	return Claim{}, fmt.Errorf("renewing claim %s won late: %w", k, err)
}

// update writes v over revision rev of k, retrying unanswered writes; a
// retry that finds v there (its earlier attempt landed) succeeds.
func (s *Store) update(ctx context.Context, k string, v []byte, rev uint64) (uint64, error) {
	n, err := attempt(ctx, answered, func(ctx context.Context) (uint64, error) { return s.kv.Update(ctx, k, v, rev) })
	if err == nil || !isWrongRevision(err) {
		return n, err
	}
	if e, gerr := s.get(ctx, k); gerr == nil && string(e.Value()) == string(v) {
		return e.Revision(), nil
	}
	return n, err
}

// Extend renews a won claim's lease, for an effect that takes longer than
// expected (a held destination). It fails when the claim was taken over.
func (s *Store) Extend(ctx context.Context, c *Claim) error {
	v, _ := s.heldValue()
	rev, err := s.update(ctx, c.Key, v, c.rev)
	if err != nil {
		return fmt.Errorf("extending claim %s: %w", c.Key, err)
	}
	c.rev = rev
	return nil
}

// Done records that the effect of a won claim happened. It retries until
// ctx ends: the caller gives it at least the claim's lease, since a claim
// whose lease runs out before Done is stored may be taken over and its
// effect repeated.
func (s *Store) Done(ctx context.Context, c Claim) error {
	v := valueDone + " " + s.owner + "-" + strconv.FormatUint(s.seq.Add(1), 10) // unique, to recognise it when read back
	if _, err := s.update(ctx, c.Key, []byte(v), c.rev); err != nil {
		return fmt.Errorf("marking %s done: %w", c.Key, err)
	}
	return nil
}

// Release gives a won claim up without the effect, so that the next
// claimant may do it at once.
func (s *Store) Release(ctx context.Context, c Claim) error {
	if err := s.kv.Delete(ctx, c.Key, jetstream.LastRevision(c.rev)); err != nil {
		return fmt.Errorf("releasing claim %s: %w", c.Key, err)
	}
	return nil
}

// TTL is the bucket's TTL, as configured on the server.
func (s *Store) TTL(ctx context.Context) (time.Duration, error) {
	st, err := s.kv.Status(ctx)
	if err != nil {
		return 0, fmt.Errorf("reading KV bucket status: %w", err)
	}
	return st.TTL(), nil
}

func isWrongRevision(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyExists) ||
		(errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence)
}

// Key is id when it is a valid KV key of plain characters (event ids are
// hex), and a hash of it otherwise: ids come over the wire and KV keys allow
// only [-/_=.a-zA-Z0-9]. A hashed key contains a '.', which a plain one
// cannot, so the two never collide. A '/' separates a caller's namespace
// from the id ("slack-webhook/<event id>").
func Key(id string) string {
	plain := len(id) <= 200 && plainKey(id, true)
	if plain {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return "h." + hex.EncodeToString(sum[:])
}

// plainKey reports whether s is a non-empty run of the KV key characters
// that are not a subject's separators or wildcards ('/' when slash).
func plainKey(s string, slash bool) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || slash && c == '/') {
			return false
		}
	}
	return s != ""
}
