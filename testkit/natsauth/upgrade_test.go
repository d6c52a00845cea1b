package natsauth

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/subject"
)

// TestTurningAuthenticationOnKeepsTheData: a deployment that ran without
// authentication (compose before deploy/nats) keeps its streams, its
// consumers' positions and its KV buckets when it restarts with this
// configuration on the same store.
func TestTurningAuthenticationOnKeepsTheData(t *testing.T) {
	t.Parallel()
	store := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// Before: as docker-compose.yml ran it (-js -sd /data -n whalewatch).
	old, err := server.NewServer(&server.Options{ServerName: "whalewatch", Host: "127.0.0.1", Port: -1,
		JetStream: true, StoreDir: store, NoLog: true, NoSigs: true})
	require.NoError(t, err)
	go old.Start()
	require.True(t, old.ReadyForConnections(10*time.Second))
	nc, err := nats.Connect(old.ClientURL())
	require.NoError(t, err)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	require.NoError(t, bus.EnsureStreams(ctx, js, DefaultStreams()))
	require.NoError(t, publish(ctx, js, subject.Telemetry(hostA, "c1", "process"), hostA))
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucketBaselines})
	require.NoError(t, err)
	_, err = kv.Put(ctx, "nginx", []byte("learned"))
	require.NoError(t, err)
	nc.Close()
	old.Shutdown()
	old.WaitForShutdown()

	// After: this configuration, the same store.
	d := Deploy(t, hostA)
	s := Server(t, d, ServerOptions{StoreDir: store})
	det := Connect(t, "detector", d.Config(s, "detector"))
	kv, err = det.JS.KeyValue(ctx, bucketBaselines)
	require.NoError(t, err)
	got, err := kv.Get(ctx, "nginx")
	require.NoError(t, err)
	require.Equal(t, "learned", string(got.Value()))
	st, err := det.JS.Stream(ctx, bus.StreamTelemetry)
	require.NoError(t, err)
	info, err := st.Info(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, info.State.Msgs)
}
