package source

import (
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/go-connections/nat"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
)

func loadInspect(t testing.TB, name string) container.InspectResponse {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	require.NoError(t, err)
	var in container.InspectResponse
	require.NoError(t, json.Unmarshal(b, &in))
	return in
}

// The recordings are docker inspect of engine 20.10: a default container
// (running, --network none) and one created with every risky option.
func TestInfoFromInspect(t *testing.T) {
	t.Parallel()
	tests := []struct {
		file string
		want *Container
	}{
		{
			file: "inspect-default.json",
			want: &Container{
				ID:        "bda291852f4bd9e5e80a32ca466d5353b1498d3b5fa8744520771f1885669e2b",
				Name:      "ww-record-default",
				Image:     event.Image{Name: "whalewatch-test/busybox", Tag: []string{"1"}},
				Labels:    map[string]string{"whalewatch.test": "record"},
				Runtime:   "runc",
				Running:   true,
				StartedAt: time.Date(2026, 11, 26, 19, 50, 34, 359502252, time.UTC),
				InitPID:   13449,
				LogDriver: "json-file",
				LogPath:   "/var/lib/docker/containers/bda291852f4bd9e5e80a32ca466d5353b1498d3b5fa8744520771f1885669e2b/bda291852f4bd9e5e80a32ca466d5353b1498d3b5fa8744520771f1885669e2b-json.log",
				Config: event.ContainerConfig{
					NetworkMode:   "none",
					IPCMode:       "private",
					Cmd:           []string{"sleep", "1000"},
					RestartPolicy: "no",
					ImageID:       "sha256:be3089d3fe753309325e72cf6af9907d5988c20ec92c04ff82bb34e1a3e8cf4a",
				},
			},
		},
		{
			file: "inspect-privileged.json",
			want: &Container{
				ID:        "08454a2157f8568d11d770d867d7cee98575b868eaae5155a2b51ca824458ebb",
				Name:      "ww-record-hardened",
				Image:     event.Image{Name: "whalewatch-test/busybox", Tag: []string{"1"}},
				Labels:    map[string]string{"app": "web", "whalewatch.test": "record"},
				Runtime:   "runc",
				LogDriver: "json-file",
				User:      "1000:1000",
				// --cpus 0.5
				CPULimitCores: 0.5,
				Config: event.ContainerConfig{
					User:           "1000:1000",
					Privileged:     true,
					CapAdd:         []string{"CAP_NET_ADMIN", "CAP_SYS_PTRACE"},
					PIDMode:        "host",
					NetworkMode:    "default",
					IPCMode:        "host",
					ReadonlyRootfs: true,
					SecurityOpt:    []string{"no-new-privileges:true", "seccomp=unconfined", "label=disable"},
					Mounts: []event.Mount{
						{Type: "bind", Source: "/tmp", Destination: "/host-tmp", ReadOnly: true},
						{Type: "bind", Source: "/var/run/docker.sock", Destination: "/var/run/docker.sock"},
						{Type: "tmpfs", Destination: "/run"},
					},
					Entrypoint:    []string{"/bin/sh"},
					Cmd:           []string{"-c", "sleep 1000"},
					MemoryLimit:   64 << 20,
					NanoCPUs:      500_000_000,
					PidsLimit:     100,
					RestartPolicy: "on-failure:3",
					PublishedPorts: []event.Port{
						{HostPort: "5353", ContainerPort: "53", Protocol: "udp"},
						{HostIP: "127.0.0.1", HostPort: "8080", ContainerPort: "80", Protocol: "tcp"},
					},
					ImageID:         "sha256:be3089d3fe753309325e72cf6af9907d5988c20ec92c04ff82bb34e1a3e8cf4a",
					NoNewPrivileges: true,
				},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			t.Parallel()
			got := FromInspect(loadInspect(t, tt.file))
			require.Equal(t, tt.want, got)

			e := ConfigEvent("h", got, time.Unix(1, 0), time.Unix(2, 0))
			require.NoError(t, e.Validate())
			require.Equal(t, event.TelemetryConfig, e.Whalewatch.Telemetry)
			require.Equal(t, &got.Config, e.Whalewatch.Config)
			require.Equal(t, e.Event.ID, ConfigEvent("h", got, time.Unix(3, 0), time.Unix(4, 0)).Event.ID,
				"the same start and configuration is the same document")
			changed := *got
			changed.Config.Privileged = !changed.Config.Privileged
			require.NotEqual(t, e.Event.ID, ConfigEvent("h", &changed, time.Unix(1, 0), time.Unix(2, 0)).Event.ID)
		})
	}
}

func TestInfoFromInspectRuntimePorts(t *testing.T) {
	t.Parallel()
	in := loadInspect(t, "inspect-privileged.json")
	// Running with -P: the engine chose the host port; that is what is exposed.
	in.NetworkSettings.Ports = nat.PortMap{"80/tcp": {{HostIP: "0.0.0.0", HostPort: "49153"}, {HostIP: "::", HostPort: "49153"}}}
	got := FromInspect(in)
	require.Equal(t, []event.Port{
		{HostIP: "0.0.0.0", HostPort: "49153", ContainerPort: "80", Protocol: "tcp"},
		{HostIP: "::", HostPort: "49153", ContainerPort: "80", Protocol: "tcp"},
	}, got.Config.PublishedPorts)
}

func TestInfoFromInspectToleratesMissingParts(t *testing.T) {
	t.Parallel()
	require.Equal(t, &Container{}, FromInspect(container.InspectResponse{}))
	require.Equal(t, &Container{ID: "x"}, FromInspect(container.InspectResponse{
		ContainerJSONBase: &container.ContainerJSONBase{ID: "x"},
	}))
}

func TestContainerInfoCopiesAreIndependent(t *testing.T) {
	t.Parallel()
	info := FromInspect(loadInspect(t, "inspect-privileged.json"))
	c := info.ECS()
	c.Image.Tag[0] = "changed"
	c.Labels["app"] = "changed"
	cfg := info.ConfigSnapshot()
	cfg.CapAdd[0] = "changed"
	cfg.Mounts[0].Source = "changed"
	require.Equal(t, "1", info.Image.Tag[0])
	require.Equal(t, "web", info.Labels["app"])
	require.Equal(t, "CAP_NET_ADMIN", info.Config.CapAdd[0])
	require.Equal(t, "/tmp", info.Config.Mounts[0].Source)
}

func TestParseImageRef(t *testing.T) {
	t.Parallel()
	digest := "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct {
		in   string
		want event.Image
	}{
		{"nginx", event.Image{Name: "nginx"}},
		{"nginx:1.27", event.Image{Name: "nginx", Tag: []string{"1.27"}}},
		{"registry:5000/team/app", event.Image{Name: "registry:5000/team/app"}},
		{"registry:5000/team/app:v2", event.Image{Name: "registry:5000/team/app", Tag: []string{"v2"}}},
		{"app@" + digest, event.Image{Name: "app", Hash: &event.ImageHash{All: []string{digest}}}},
		{"app:v1@" + digest, event.Image{Name: "app", Tag: []string{"v1"}, Hash: &event.ImageHash{All: []string{digest}}}},
		{digest, event.Image{Name: digest}},
		{"be3089d3fe75", event.Image{Name: "be3089d3fe75"}},
		{"app:", event.Image{Name: "app"}},
		{"", event.Image{}},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, ParseImageRef(tt.in), tt.in)
	}
}

func TestNoNewPrivileges(t *testing.T) {
	t.Parallel()
	tests := []struct {
		opts []string
		want bool
	}{
		{nil, false},
		{[]string{"no-new-privileges"}, true},
		{[]string{"no-new-privileges:true"}, true},
		{[]string{"no-new-privileges=true"}, true},
		{[]string{"no-new-privileges:false"}, false},
		{[]string{"no-new-privileges", "no-new-privileges=false"}, false},
		{[]string{"seccomp=unconfined"}, false},
		{[]string{"no-new-privileges:bogus"}, false},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, noNewPrivileges(tt.opts), "%v", tt.opts)
	}
}

func TestCPULimitCores(t *testing.T) {
	t.Parallel()
	require.Equal(t, 1.5, cpuLimitCores(container.Resources{NanoCPUs: 1_500_000_000}))
	require.Equal(t, 0.5, cpuLimitCores(container.Resources{CPUQuota: 50000}))
	require.Equal(t, 2.0, cpuLimitCores(container.Resources{CPUQuota: 100000, CPUPeriod: 50000}))
	require.Equal(t, 0.0, cpuLimitCores(container.Resources{}))
}
