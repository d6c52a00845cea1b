// Package sensor is the kernel sensor's API (docs: /work/brief/SENSOR_API.md
// on the sensor branch). THIS IS A STUB: Open always fails with
// ErrUnsupported, so that the collector's wiring compiles and its fallback
// chain (eBPF → process connector → docker top) is tested; the real package
// (eBPF programs on tracepoints, cilium/ebpf) replaces these two files at
// merge.
package sensor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// ErrUnsupported is wrapped by Open's error when this kernel or these
// privileges cannot run the sensor (not root, no BTF, program refused by the
// verifier, tracepoint missing); the collector then falls back to the process
// connector (plus fanotify) and then to docker top.
var ErrUnsupported = errors.New("kernel sensor unsupported")

// Containers resolves a container id (64 hex, as the kernel sensor reads it
// from the memory cgroup's kernfs node name) to what the collector knows of
// it. ok is false while the container is not known yet (the sensor then waits
// up to a short bound, like the process connector does, then publishes with
// the id alone).
type Containers interface {
	Container(id string) (c event.Container, ok bool)
}

// Sensor is the loaded kernel sensor.
type Sensor struct{}

// Open loads and attaches the programs. host is the collector's host name
// (host.name of every event). The stub never can.
func Open(cfg Config, host string, containers Containers, log *slog.Logger, reg prometheus.Registerer) (*Sensor, error) {
	return nil, fmt.Errorf("opening the kernel sensor: this build has the stub package: %w", ErrUnsupported)
}

// Run reads the ring buffer until ctx ends and emits telemetry built on the
// contract in pkg/event (schema 1.2). Run returns nil when ctx ends.
func (s *Sensor) Run(ctx context.Context, emit func(*event.Event)) error {
	<-ctx.Done()
	return nil
}

// Mode is "ebpf": whalewatch.source of its events and the mode label of the
// collector's source-mode metric.
func (s *Sensor) Mode() string { return "ebpf" }

// Close detaches every program and frees the maps. Safe after Run returned.
func (s *Sensor) Close() error { return nil }
