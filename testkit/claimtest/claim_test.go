package claimtest

import (
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/claim"
	"github.com/whalewatch/whalewatch/testkit/natstest"
)

func open(t *testing.T, js jetstream.JetStream, lease time.Duration) *claim.Store {
	t.Helper()
	s, err := claim.Open(t.Context(), js, claim.Config{Bucket: "claims", TTL: time.Hour, Replicas: 1, Lease: lease})
	require.NoError(t, err)
	return s
}

func TestClaimLifecycle(t *testing.T) {
	t.Parallel()
	_, js := natstest.Connect(t, natstest.Server(t))
	ctx := t.Context()
	a, b := open(t, js, time.Minute), open(t, js, time.Minute)

	c, err := a.Claim(ctx, "out/e1")
	require.NoError(t, err)
	require.Equal(t, claim.Won, c.State)

	held, err := b.Claim(ctx, "out/e1")
	require.NoError(t, err)
	require.Equal(t, claim.Held, held.State)
	require.InDelta(t, time.Minute.Seconds(), held.Wait(time.Now()).Seconds(), 5)

	require.NoError(t, a.Release(ctx, c))
	c2, err := b.Claim(ctx, "out/e1")
	require.NoError(t, err)
	require.Equal(t, claim.Won, c2.State, "a released claim can be won at once")
	require.NoError(t, b.Done(ctx, c2))

	for _, s := range []*claim.Store{a, b} {
		got, err := s.Claim(ctx, "out/e1")
		require.NoError(t, err)
		require.Equal(t, claim.Done, got.State)
	}
	require.Error(t, a.Done(ctx, c), "a claim given up cannot be marked done")
}

func TestExpiredLeaseIsTakenOver(t *testing.T) {
	t.Parallel()
	_, js := natstest.Connect(t, natstest.Server(t))
	ctx := t.Context()
	dead, alive := open(t, js, 200*time.Millisecond), open(t, js, time.Minute)
	c, err := dead.Claim(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, claim.Won, c.State)

	var got claim.Claim
	natstest.Eventually(t, 5*time.Second, func() bool {
		got, err = alive.Claim(ctx, "k")
		require.NoError(t, err)
		return got.State == claim.Won
	}, "the expired claim was not taken over")
	require.Error(t, dead.Done(ctx, c), "the old holder lost its claim")
	require.NoError(t, alive.Done(ctx, got))
}

func TestExtend(t *testing.T) {
	t.Parallel()
	_, js := natstest.Connect(t, natstest.Server(t))
	ctx := t.Context()
	s, other := open(t, js, time.Second), open(t, js, time.Minute)
	c, err := s.Claim(ctx, "k")
	require.NoError(t, err)
	for range 4 {
		require.NoError(t, s.Extend(ctx, &c))
		got, err := other.Claim(ctx, "k")
		require.NoError(t, err)
		require.Equal(t, claim.Held, got.State)
		time.Sleep(300 * time.Millisecond) // lets the lease run down (1.2 s in all): what Extend is for
	}
	require.NoError(t, s.Done(ctx, c))
}

// A claim won after its write's retries used most of the lease (a slow
// cluster, a leader change) is renewed before Claim returns: the effect
// starts with at least half a lease, so nobody takes it over meanwhile.
// The store's clock jumps 0.6 lease between setting the lease and winning.
func TestClaimWonLateIsRenewed(t *testing.T) {
	t.Parallel()
	_, js := natstest.Connect(t, natstest.Server(t))
	ctx := t.Context()
	const lease = time.Minute
	var mu sync.Mutex
	clock := time.Now()
	late, err := claim.Open(ctx, js, claim.Config{Bucket: "claims", TTL: time.Hour, Replicas: 1, Lease: lease, Now: func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		clock = clock.Add(lease * 6 / 10)
		return clock
	}})
	require.NoError(t, err)
	kv, err := js.KeyValue(ctx, "claims")
	require.NoError(t, err)
	// writes is how many writes the bucket has stored: a key's revision is
	// the sequence of its last write in the bucket's stream.
	writes := func() uint64 {
		st, err := kv.Status(ctx)
		require.NoError(t, err)
		return st.(*jetstream.KeyValueBucketStatus).StreamInfo().State.LastSeq
	}

	before := writes()
	c, err := late.Claim(ctx, "slow")
	require.NoError(t, err)
	require.Equal(t, claim.Won, c.State)
	e, err := kv.Get(ctx, "slow")
	require.NoError(t, err)
	require.Equal(t, before+2, e.Revision(), "created, then renewed")
	other := open(t, js, lease)
	held, err := other.Claim(ctx, "slow")
	require.NoError(t, err)
	require.Equal(t, claim.Held, held.State)
	require.NoError(t, late.Done(ctx, c), "the renewed claim is the one marked done")

	// Won in time: not renewed.
	before = writes()
	c, err = other.Claim(ctx, "fast")
	require.NoError(t, err)
	require.Equal(t, claim.Won, c.State)
	e, err = kv.Get(ctx, "fast")
	require.NoError(t, err)
	require.Equal(t, before+1, e.Revision(), "created only")
}

func TestOneWinnerAmongMany(t *testing.T) {
	t.Parallel()
	_, js := natstest.Connect(t, natstest.Server(t))
	stores := make([]*claim.Store, 8)
	for i := range stores {
		stores[i] = open(t, js, time.Minute)
	}
	for _, key := range []string{"a", "b", "c", "d"} {
		var mu sync.Mutex
		won := 0
		var wg sync.WaitGroup
		for _, s := range stores {
			wg.Go(func() {
				c, err := s.Claim(t.Context(), key)
				require.NoError(t, err)
				if c.State == claim.Won {
					mu.Lock()
					won++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		require.Equal(t, 1, won, "key %s", key)
	}
}

func TestOpenKeepsTheBucketsTTL(t *testing.T) {
	t.Parallel()
	_, js := natstest.Connect(t, natstest.Server(t))
	ctx := t.Context()
	first, err := claim.Open(ctx, js, claim.Config{Bucket: "ttl", TTL: time.Hour, Lease: time.Second})
	require.NoError(t, err)
	second, err := claim.Open(ctx, js, claim.Config{Bucket: "ttl", TTL: time.Minute, Lease: time.Second})
	require.NoError(t, err)
	for _, s := range []*claim.Store{first, second} {
		ttl, err := s.TTL(ctx)
		require.NoError(t, err)
		require.Equal(t, time.Hour, ttl, "a replica with another TTL does not reconfigure the bucket")
	}
}

func TestKey(t *testing.T) {
	t.Parallel()
	tests := []struct {
		id    string
		plain bool
	}{
		{"0123456789abcdef0123456789abcdef", true},
		{"slack-webhook/0123abcd", true},
		{"", false},
		{"a.b", false},
		{"a b", false},
		{"*", false},
		{string(make([]byte, 300)), false},
	}
	for _, tt := range tests {
		k := claim.Key(tt.id)
		require.Equal(t, tt.plain, k == tt.id, "%q -> %q", tt.id, k)
		require.Regexp(t, `^[-/_=.a-zA-Z0-9]+$`, k)
	}
	require.NotEqual(t, claim.Key("a.b"), claim.Key("a b"))
}

// A prefix puts every key under "<prefix>." unhashed, so that a permission
// can be limited to `$KV.<bucket>.<prefix>.>`; a prefix that is not one
// plain token is refused.
func TestPrefix(t *testing.T) {
	t.Parallel()
	_, js := natstest.Connect(t, natstest.Server(t))
	ctx := t.Context()
	for _, tt := range []struct {
		prefix, id, key string
	}{
		{"web-1", "0123abcd", "web-1.0123abcd"},
		{"web_example_com", "a.b", "web_example_com." + claim.Key("a.b")},
	} {
		s, err := claim.Open(ctx, js, claim.Config{Bucket: "prefixed", TTL: time.Hour, Lease: time.Minute, Prefix: tt.prefix})
		require.NoError(t, err)
		c, err := s.Claim(ctx, tt.id)
		require.NoError(t, err)
		require.Equal(t, claim.Won, c.State)
		require.Equal(t, tt.key, c.Key)
		require.NoError(t, s.Done(ctx, c))
		kv, err := js.KeyValue(ctx, "prefixed")
		require.NoError(t, err)
		_, err = kv.Get(ctx, tt.key)
		require.NoError(t, err, "stored under %s", tt.key)
	}
	for _, bad := range []string{"a.b", "a*", ">", "h\u00f6st", "a/b"} {
		_, err := claim.Open(ctx, js, claim.Config{Bucket: "prefixed", Lease: time.Minute, Prefix: bad})
		require.Error(t, err, "prefix %q", bad)
	}
}
