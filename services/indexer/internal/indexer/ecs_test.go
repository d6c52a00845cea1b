package indexer

import (
	"bufio"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// ecsReference reads testdata/ecs-<version>.tsv: field -> type and
// multi-fields.
func ecsReference(t *testing.T) map[string][]string {
	t.Helper()
	f, err := os.Open("testdata/ecs-" + event.ECSVersion + ".tsv")
	require.NoError(t, err, "the ECS reference of event.ECSVersion")
	defer f.Close()
	out := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		cols := strings.Split(line, "\t")
		require.GreaterOrEqual(t, len(cols), 2, line)
		out[cols[0]] = cols[1:]
	}
	require.NoError(t, sc.Err())
	return out
}

// ecsDeviations are the mapped ECS fields whose type differs from ECS's, on
// purpose.
var ecsDeviations = map[string]string{
	// ECS leaves container.labels an object, one field per label key; the
	// keys are chosen by whoever starts a container, so one flattened field
	// keeps them from exploding the mapping.
	"container.labels": "flattened",
}

// Every mapped field outside whalewatch.* is an ECS field of ECSVersion with
// ECS's type and multi-fields.
func TestMappingsFollowECS(t *testing.T) {
	t.Parallel()
	ref := ecsReference(t)
	for field, m := range mappedFields(t) {
		if strings.HasPrefix(field, "whalewatch.") {
			continue
		}
		want, ok := ref[field]
		require.True(t, ok, "%s is not an ECS %s field: move it under whalewatch.*", field, event.ECSVersion)
		typ, _ := m["type"].(string)
		if dev, ok := ecsDeviations[field]; ok {
			require.Equal(t, dev, typ, field)
			continue
		}
		require.Equal(t, want[0], typ, "type of %s", field)
		if sub, ok := m["fields"].(map[string]any); ok {
			for name, def := range sub {
				mf := name + ":" + def.(map[string]any)["type"].(string)
				require.True(t, slices.Contains(want[1:], mf), "%s has multi-field %s, ECS has %v", field, mf, want[1:])
			}
		}
	}
}

// A completed document carries the ECS fields every event must have.
func TestCompleteFillsECS(t *testing.T) {
	t.Parallel()
	p := newPreparer("default", "v1.2.3", newDocumentsCounter(prometheus.NewRegistry()))
	e := telemetry(event.TelemetryNetwork)
	e.Source = &event.Endpoint{IP: "172.17.0.2", Port: 4444}
	e.Destination = &event.Endpoint{IP: "not an ip", Port: 80}
	e.Process.User = &event.User{ID: "0", Name: "root"}
	d, err := p.prepare([]byte(marshal(t, e)))
	require.NoError(t, err)
	require.Nil(t, d.Prefix, "an incomplete document is completed, not spliced")
	got, err := event.Decode(d.Body)
	require.NoError(t, err)
	require.Equal(t, &event.ECS{Version: event.ECSVersion}, got.ECS)
	require.Equal(t, &event.DataStream{Type: "logs", Dataset: "whalewatch.network", Namespace: "default"}, got.DataStream)
	require.Equal(t, &event.Agent{Name: "docker-host-1", Type: "whalewatch-collector", Version: "v1.2.3"}, got.Agent)
	require.Equal(t, "docker-host-1", got.Observer.Hostname)
	require.Equal(t, []string{"172.17.0.2"}, got.Related.IP, "only valid IPs")
	require.Equal(t, []string{"root"}, got.Related.User)
	require.Equal(t, []string{"docker-host-1"}, got.Related.Hosts)
	require.Len(t, got.Process.EntityID, 32)

	// Stable: the same process in another document has the same entity id.
	e2 := telemetry(event.TelemetryProcess)
	e2.Complete(nil)
	e3 := telemetry(event.TelemetryLog)
	e3.Complete(nil)
	require.Equal(t, e2.Process.EntityID, e3.Process.EntityID)
	require.Equal(t, got.Process.EntityID, e2.Process.EntityID)
	e3.Process.PID++
	e3.Process.EntityID = ""
	e3.Complete(nil)
	require.NotEqual(t, e2.Process.EntityID, e3.Process.EntityID)

	// A complete document is stored as it arrived, data_stream spliced in.
	e2.Event.ID = event.NewID()
	raw := marshal(t, e2)
	d, err = p.prepare([]byte(raw))
	require.NoError(t, err)
	require.Equal(t, `{"data_stream":{"type":"logs","dataset":"whalewatch.process","namespace":"default"},`+raw[1:], string(d.Prefix)+string(d.Body))

	// Resource and config telemetry fill container metrics and context.
	r := telemetry(event.TelemetryResource)
	r.Whalewatch.Resource = &event.Resource{CPULimitPercent: 50, MemoryBytes: 256, MemoryLimitBytes: 1024, NetRxBytes: 1, NetTxBytes: 2, BlockReadBytes: 3, BlockWriteBytes: 4}
	r.Whalewatch.Config = &event.ContainerConfig{Privileged: true}
	r.Complete(nil)
	require.Equal(t, 0.5, r.Container.CPU.Usage)
	require.Equal(t, 0.25, r.Container.Memory.Usage)
	require.Equal(t, uint64(1), r.Container.Network.Ingress.Bytes)
	require.Equal(t, uint64(4), r.Container.Disk.Write.Bytes)
	require.True(t, r.Container.SecurityContext.Privileged)
}
