package natscluster_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/testkit/natscluster"
)

// A killed stream leader is replaced (Outage measures how long that took),
// a restarted node catches up, even when its client port was taken while it
// was down, and no acknowledged message is lost.
func TestKillAndRestartStreamLeader(t *testing.T) {
	t.Parallel()
	c := natscluster.New(t)
	_, js := c.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}, Replicas: 3})
	require.NoError(t, err)
	_, err = js.Publish(ctx, "s.1", []byte("one"))
	require.NoError(t, err)

	old := c.WaitStreamLeader("S", 10*time.Second)
	urls := strings.Split(c.URLs(), ",")
	killed := time.Now()
	c.Kill(old)
	outage := c.Outage(killed, func() int { return c.StreamLeader("S") })
	require.Nil(t, c.Server(old))
	now := c.WaitStreamLeader("S", 20*time.Second)
	require.NotEqual(t, old, now)
	require.Less(t, outage(20*time.Second), time.Since(killed))
	_, err = js.Publish(ctx, "s.2", []byte("two"))
	require.NoError(t, err)

	// Any outgoing connection's local port may take a down node's port.
	taken, err := net.Listen("tcp", strings.TrimPrefix(urls[old], "nats://"))
	require.NoError(t, err)
	defer taken.Close()
	c.Restart(old)
	require.NotEqual(t, urls[old], strings.Split(c.URLs(), ",")[old], "restarted on another port")
	s, err := js.Stream(ctx, "S")
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 2, info.State.Msgs)
	require.Eventually(t, func() bool {
		info, err := s.Info(ctx)
		if err != nil || info.Cluster == nil {
			return false
		}
		for _, r := range info.Cluster.Replicas {
			if !r.Current {
				return false
			}
		}
		return len(info.Cluster.Replicas) == 2
	}, 20*time.Second, 50*time.Millisecond, "restarted node catches up")
}
