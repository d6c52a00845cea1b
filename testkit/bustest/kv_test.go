package bustest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/testkit/natstest"
)

// EnsureKeyValue makes a bucket match its configuration; OpenKeyValue
// creates it but leaves an existing bucket's configuration alone.
func TestEnsureKeyValue(t *testing.T) {
	t.Parallel()
	type open func(context.Context, bus.KeyValueManager, jetstream.KeyValueConfig, func(error)) (jetstream.KeyValue, error)
	for _, tc := range []struct {
		name    string
		open    open
		wantTTL time.Duration // after a second open asking one minute
	}{
		{"ensure updates", bus.EnsureKeyValue, time.Minute},
		{"open keeps", bus.OpenKeyValue, time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, js := natstest.Connect(t, natstest.Server(t))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			cfg := jetstream.KeyValueConfig{Bucket: "b", TTL: time.Hour, History: 1, Storage: jetstream.FileStorage}
			var warnings []error
			warn := func(err error) { warnings = append(warnings, err) }
			kv, err := tc.open(ctx, js, cfg, warn)
			require.NoError(t, err)
			_, err = kv.Put(ctx, "k", []byte("v"))
			require.NoError(t, err)
			again, err := tc.open(ctx, js, cfg, warn) // as found: nothing to do
			require.NoError(t, err)
			e, err := again.Get(ctx, "k")
			require.NoError(t, err)
			require.Equal(t, "v", string(e.Value()))

			cfg.TTL = time.Minute
			kv, err = tc.open(ctx, js, cfg, warn)
			require.NoError(t, err)
			st, err := kv.Status(ctx)
			require.NoError(t, err)
			require.Equal(t, tc.wantTTL, st.TTL())
			require.Empty(t, warnings)
		})
	}
}

// An open that cannot reach NATS is retried, each failure reported, until
// its context ends.
func TestEnsureKeyValueRetriesUntilContextEnds(t *testing.T) {
	t.Parallel()
	s := natstest.Server(t)
	_, js := natstest.Connect(t, s)
	s.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tries := 0
	_, err := bus.EnsureKeyValue(ctx, js, jetstream.KeyValueConfig{Bucket: "b"}, func(error) { tries++ })
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Positive(t, tries)
}
