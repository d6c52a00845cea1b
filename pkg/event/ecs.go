package event

import (
	"net/netip"
	"slices"
	"strconv"
)

// ECSVersion is the version of the Elastic Common Schema the documents
// follow, written to ecs.version (which ECS requires in every event).
const ECSVersion = "8.17.0"

// ECS is ECS ecs.*.
type ECS struct {
	Version string `json:"version"`
}

// DataStream is ECS data_stream.*: where the document is stored. The
// indexer sets it from its routing when a publisher did not.
type DataStream struct {
	Type      string `json:"type"`
	Dataset   string `json:"dataset"`
	Namespace string `json:"namespace"`
}

// Agent is ECS agent.*: the whalewatch service that produced the document.
type Agent struct {
	Name    string `json:"name,omitempty"`    // the host it runs on
	Type    string `json:"type,omitempty"`    // whalewatch-collector, whalewatch-detector, ...
	Version string `json:"version,omitempty"` // its build version
}

// Observer is ECS observer.*: the Docker host the collector observes
// containers on.
type Observer struct {
	Hostname string `json:"hostname,omitempty"`
	Name     string `json:"name,omitempty"`
	Type     string `json:"type,omitempty"` // always "host"
	Vendor   string `json:"vendor,omitempty"`
	Product  string `json:"product,omitempty"`
	Version  string `json:"version,omitempty"`
}

// Related is ECS related.*: every IP, user and host a document mentions, so
// that one search finds them all.
type Related struct {
	IP    []string `json:"ip,omitempty"`
	User  []string `json:"user,omitempty"`
	Hosts []string `json:"hosts,omitempty"`
}

// ContainerUsage is ECS container.cpu / container.memory: a fraction, 0..1.
type ContainerUsage struct {
	Usage float64 `json:"usage"`
}

// ContainerNetwork is ECS container.network.*: cumulative bytes.
type ContainerNetwork struct {
	Ingress ByteCount `json:"ingress"`
	Egress  ByteCount `json:"egress"`
}

// ContainerDisk is ECS container.disk.*: cumulative bytes.
type ContainerDisk struct {
	Read  ByteCount `json:"read"`
	Write ByteCount `json:"write"`
}

// ByteCount is ECS's {bytes: n}.
type ByteCount struct {
	Bytes uint64 `json:"bytes"`
}

// ContainerSecurityContext is ECS container.security_context.*.
type ContainerSecurityContext struct {
	Privileged bool `json:"privileged"`
}

// Vendor is observer.vendor and observer.product.
const Vendor = "whalewatch"

// Complete fills the ECS fields derived from the rest of the document:
// ecs.version, agent (when agent is not nil and none is set), observer,
// related.*, process.entity_id and container metrics. It is idempotent. A
// publisher that calls it before publishing lets the indexer store the
// document as it is, without decoding it.
func (e *Event) Complete(agent *Agent) {
	e.ECS = &ECS{Version: ECSVersion}
	if e.Agent == nil && agent != nil {
		a := *agent
		e.Agent = &a
	}
	if e.Observer == nil && e.Host.Name != "" {
		e.Observer = &Observer{Hostname: e.Host.Name, Name: e.Host.Name, Type: "host", Vendor: Vendor, Product: Vendor}
		if e.Agent != nil {
			e.Observer.Version = e.Agent.Version
		}
	}
	if p := e.Process; p != nil && p.EntityID == "" && p.PID > 0 {
		cid := ""
		if e.Container != nil {
			cid = e.Container.ID
		}
		start := ""
		if !p.Start.IsZero() {
			start = strconv.FormatInt(p.Start.UnixMilli(), 10)
		}
		p.EntityID = DeriveID("process", e.Host.Name, cid, strconv.Itoa(p.PID), start)
	}
	if c := e.Container; c != nil {
		if r := e.Whalewatch.Resource; r != nil {
			if r.CPULimitPercent > 0 {
				c.CPU = &ContainerUsage{Usage: r.CPULimitPercent / 100}
			}
			if r.MemoryLimitBytes > 0 {
				c.Memory = &ContainerUsage{Usage: float64(r.MemoryBytes) / float64(r.MemoryLimitBytes)}
			}
			c.Network = &ContainerNetwork{Ingress: ByteCount{r.NetRxBytes}, Egress: ByteCount{r.NetTxBytes}}
			c.Disk = &ContainerDisk{Read: ByteCount{r.BlockReadBytes}, Write: ByteCount{r.BlockWriteBytes}}
		}
		if cfg := e.Whalewatch.Config; cfg != nil {
			c.SecurityContext = &ContainerSecurityContext{Privileged: cfg.Privileged}
		}
	}
	var rel Related
	add := func(list *[]string, v string) {
		if v != "" && !slices.Contains(*list, v) {
			*list = append(*list, v)
		}
	}
	add(&rel.Hosts, e.Host.Name)
	for _, ep := range []*Endpoint{e.Source, e.Destination} {
		if ep == nil {
			continue
		}
		if ip, err := netip.ParseAddr(ep.IP); err == nil { // related.ip is an ip field
			add(&rel.IP, ip.String())
		}
	}
	if e.Process != nil && e.Process.User != nil {
		add(&rel.User, e.Process.User.Name)
	}
	if cfg := e.Whalewatch.Config; cfg != nil {
		add(&rel.User, cfg.User)
	}
	e.Related = &rel
}
