package natsauth

import (
	"path/filepath"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"
)

// TestClusterNodeLoadsTheSameIdentities: nats-cluster.conf takes its name and
// routes from the environment, authenticates routes and has the same users
// and permissions as nats.conf. (Running the cluster is issue 13's test.)
func TestClusterNodeLoadsTheSameIdentities(t *testing.T) {
	d := Deploy(t, hostA)
	t.Setenv("NATS_SERVER_NAME", "nats-2")
	t.Setenv("NATS_ROUTE_PASSWORD", "s3cret")
	t.Setenv("NATS_ROUTES", "[nats-route://route:s3cret@nats-1:6222, nats-route://route:s3cret@nats-2:6222, nats-route://route:s3cret@nats-3:6222]")
	node, err := server.ProcessConfigFile(filepath.Join(d.Dir, "nats-cluster.conf"))
	require.NoError(t, err)
	single, err := server.ProcessConfigFile(filepath.Join(d.Dir, "nats.conf"))
	require.NoError(t, err)

	require.Equal(t, "nats-2", node.ServerName)
	require.Equal(t, "whalewatch", node.Cluster.Name)
	require.Len(t, node.Routes, 3)
	require.Equal(t, "route", node.Cluster.Username)
	require.Equal(t, "s3cret", node.Cluster.Password)
	require.True(t, node.JetStream)

	require.Len(t, node.Nkeys, 6) // detector, indexer, notifier, setup, admin, collector-web-1
	require.Equal(t, len(single.Nkeys), len(node.Nkeys))
	for i := range single.Nkeys {
		require.Equal(t, single.Nkeys[i].Nkey, node.Nkeys[i].Nkey)
		require.Equal(t, single.Nkeys[i].Permissions, node.Nkeys[i].Permissions)
	}
}
