package claimtest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/claim"
	"github.com/whalewatch/whalewatch/testkit/natscluster"
)

// TestClusterLeaderKill: three workers race for every key of an R3 bucket
// while the node leading the bucket is killed and restarted. Each effect
// happens exactly once: a claim or done record whose answer is lost with the
// leader is recognised when read back, never repeated.
func TestClusterLeaderKill(t *testing.T) {
	t.Parallel()
	c := natscluster.New(t)
	const workers, keys = 3, 150
	const lease = 12 * time.Second // the notifier's, with Slack's 10 s timeout
	stores := make([]*claim.Store, workers)
	for i := range stores {
		_, js := c.Connect(t)
		s, err := claim.Open(t.Context(), js, claim.Config{Bucket: "claims", TTL: time.Hour, Replicas: 3, Lease: lease})
		require.NoError(t, err)
		stores[i] = s
	}
	_, js := c.Connect(t)
	st, err := js.Stream(t.Context(), "KV_claims")
	require.NoError(t, err)
	require.Equal(t, 3, st.CachedInfo().Config.Replicas, "the claims are stored with three replicas")
	leader := c.WaitStreamLeader("KV_claims", 20*time.Second)

	var mu sync.Mutex
	effects := map[string]int{}
	var wg sync.WaitGroup
	for k := range keys {
		switch k {
		case keys / 3:
			c.Kill(leader)
		case 2 * keys / 3:
			c.Restart(leader)
		}
		key := fmt.Sprintf("out/e%03d", k)
		for _, s := range stores {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				for ctx.Err() == nil {
					// A worker gives each attempt what the notifier does:
					// its own deadline, then a retry.
					actx, acancel := context.WithTimeout(ctx, 10*time.Second)
					cl, err := s.Claim(actx, key)
					acancel()
					switch {
					case err != nil:
						time.Sleep(100 * time.Millisecond)
						continue
					case cl.State == claim.Done:
						return
					case cl.State == claim.Held:
						time.Sleep(cl.Wait(time.Now()) + 50*time.Millisecond)
						continue
					}
					mu.Lock()
					effects[key]++
					mu.Unlock()
					dctx, dcancel := context.WithTimeout(ctx, lease)
					err = s.Done(dctx, cl)
					dcancel()
					if err == nil {
						return
					}
				}
				t.Errorf("%s: no outcome within a minute", key)
			})
		}
		time.Sleep(20 * time.Millisecond) // pacing the load, not synchronising
	}
	wg.Wait()
	require.Len(t, effects, keys)
	for key, n := range effects {
		require.Equal(t, 1, n, "effects of %s", key)
	}
}
