package service

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// BuildInfo is what the binary knows about how it was built: the main
// module's version, the VCS revision and commit time `go build` stamped
// (empty when built outside a checkout or with -buildvcs=false), whether the
// tree had uncommitted changes, and the Go version.
type BuildInfo struct {
	Version   string
	Revision  string
	Time      string
	Modified  bool
	GoVersion string
}

// Set at link time (make build: -ldflags -X) because `go build` stamps no VCS
// information in workspace mode; what the binary's own build information
// holds wins.
var (
	linkVersion  string
	linkRevision string
	linkTime     string
)

// ReadBuildInfo reads the running binary's build information.
func ReadBuildInfo() BuildInfo {
	bi := BuildInfo{Version: "(unknown)", Revision: linkRevision, Time: linkTime, GoVersion: runtime.Version()}
	if linkVersion != "" {
		bi.Version = linkVersion
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return bi
	}
	if info.Main.Version != "" && (linkVersion == "" || info.Main.Version != "(devel)") {
		bi.Version = info.Main.Version
	}
	if info.GoVersion != "" {
		bi.GoVersion = info.GoVersion
	}
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			bi.Revision = s.Value
		case "vcs.time":
			bi.Time = s.Value
		case "vcs.modified":
			bi.Modified = s.Value == "true"
		}
	}
	return bi
}

// write prints bi as the version subcommand does.
func (bi BuildInfo) write(w io.Writer, name string) {
	rev := bi.Revision
	if rev == "" {
		rev = "unknown"
	}
	if bi.Modified {
		rev += " (modified)"
	}
	when := bi.Time
	if when == "" {
		when = "unknown"
	}
	fmt.Fprintf(w, "whalewatch %s %s\nrevision: %s\ncommitted: %s\ngo: %s\n", name, bi.Version, rev, when, bi.GoVersion)
}

// register adds the whalewatch_build_info gauge (always 1; the build is in
// its labels, as Prometheus' own *_build_info metrics do) to reg.
func (bi BuildInfo) register(reg prometheus.Registerer, name string) error {
	modified := "false"
	if bi.Modified {
		modified = "true"
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "whalewatch_build_info",
		Help: "Build of the running binary; the value is always 1.",
		ConstLabels: prometheus.Labels{
			"service":    name,
			"version":    bi.Version,
			"revision":   bi.Revision,
			"vcs_time":   bi.Time,
			"modified":   modified,
			"go_version": bi.GoVersion,
		},
	})
	g.Set(1)
	if err := reg.Register(g); err != nil {
		return fmt.Errorf("registering whalewatch_build_info: %w", err)
	}
	return nil
}
