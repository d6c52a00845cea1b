package collector

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/client"

	"github.com/whalewatch/whalewatch/services/collector/internal/source/dockerevents"
)

// NewDockerClient returns a Docker client for host (empty: the Docker
// client's defaults from the environment), negotiating the API version so that
// older engines (20.10, API 1.41) are served.
func NewDockerClient(host string) (*client.Client, error) {
	opts := []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}
	if host != "" {
		opts = append(opts, client.WithHost(host))
	}
	c, err := client.NewClientWithOpts(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	return c, nil
}

// dockerAPI is what the collector asks of the Docker engine.
type dockerAPI interface {
	Ping(ctx context.Context) (types.Ping, error)
	Events(ctx context.Context, options events.ListOptions) (<-chan events.Message, <-chan error)
	ContainerList(ctx context.Context, options container.ListOptions) ([]container.Summary, error)
	ContainerInspect(ctx context.Context, id string) (container.InspectResponse, error)
	ContainerTop(ctx context.Context, id string, arguments []string) (container.TopResponse, error)
	// ExecInspect returns an exec instance with its process configuration.
	ExecInspect(ctx context.Context, execID string) (dockerevents.ExecDetails, error)
}

// dockerClient adds ExecInspect to the Docker client. The client's own
// ContainerExecInspect decodes only the exec's id, state and pid and drops its
// ProcessConfig (argv, user, privileged), which is what the collector needs,
// so that one request is made here over the client's own transport.
type dockerClient struct {
	*client.Client
	https bool
}

func newDockerAPI(c *client.Client) *dockerClient {
	// FromEnv enables TLS exactly when DOCKER_CERT_PATH is set.
	return &dockerClient{Client: c, https: os.Getenv("DOCKER_CERT_PATH") != ""}
}

// maxExecInspect bounds the answer read; argv is at most a few hundred KiB.
const maxExecInspect = 4 << 20

func (d *dockerClient) ExecInspect(ctx context.Context, execID string) (dockerevents.ExecDetails, error) {
	var out dockerevents.ExecDetails
	u, err := client.ParseHostURL(d.DaemonHost())
	if err != nil {
		return out, err
	}
	scheme, host := "http", client.DummyHost // unix and npipe: the transport dials the socket
	if u.Scheme == "tcp" {
		host = u.Host
		if d.https {
			scheme = "https"
		}
	}
	p := "/exec/" + url.PathEscape(execID) + "/json"
	if v := d.ClientVersion(); v != "" {
		p = "/v" + strings.TrimPrefix(v, "v") + p
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+host+p, nil)
	if err != nil {
		return out, err
	}
	resp, err := d.HTTPClient().Do(req)
	if err != nil {
		return out, fmt.Errorf("inspecting exec %s: %w", execID, err)
	}
	defer resp.Body.Close()
	body := io.LimitReader(resp.Body, maxExecInspect)
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(body, 512))
		return out, fmt.Errorf("inspecting exec %s: %s: %s", execID, resp.Status, strings.TrimSpace(string(msg)))
	}
	if err := json.NewDecoder(body).Decode(&out); err != nil {
		return out, fmt.Errorf("decoding exec %s: %w", execID, err)
	}
	return out, nil
}
