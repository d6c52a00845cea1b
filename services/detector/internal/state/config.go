package state

import (
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// Config bounds and tunes the Recorder.
type Config struct {
	// MaxContainers bounds the containers tracked at once; the least recently
	// seen is forgotten first.
	MaxContainers int
	// MaxWindowEntries bounds each per-container window (connections, dropped
	// files, open sockets).
	MaxWindowEntries int
	// IdleTimeout forgets a container not seen for this long (one that died
	// while the detector was down never sends die).
	IdleTimeout time.Duration
	// ScanWindow is the sliding window of the scan fan-out counters.
	ScanWindow time.Duration
	// CPUSustainedPercent is the CPU level (percent of the container's CPU
	// limit, or of one core when unlimited) above which CPUHighSeconds runs.
	CPUSustainedPercent float64
	// DropWindow is how long a file added or changed in a container is
	// remembered for exec-after-drop.
	DropWindow time.Duration
	// SpikeFactor: a traffic rate above SpikeFactor times the container's
	// recent average (and above SpikeMinBytes per second) is a spike.
	SpikeFactor   float64
	SpikeMinBytes float64
	// BaselineLearning is the learning period of an image's baseline, from
	// the image's first sight; 0 disables baselines.
	BaselineLearning time.Duration
	// BaselineMaxEntries bounds each set of a baseline.
	BaselineMaxEntries int
	// BaselineFlush is how often learned baseline entries are written to KV.
	BaselineFlush time.Duration
	// EvidenceItems bounds each per-container evidence list (log lines, file
	// changes, connections, execs) that threats carry.
	EvidenceItems int
	// IncidentWindow groups the threats of a container into one incident
	// while they come less than this apart; 0 publishes every threat alone.
	IncidentWindow time.Duration
}

// RegisterFlags registers the state flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.IntVar(&c.MaxContainers, "state-max-containers", 10000, "most containers whose windows are kept at once (least recently seen forgotten first)")
	fs.IntVar(&c.MaxWindowEntries, "state-max-window-entries", 1024, "most entries of each per-container window (connections, dropped files, open sockets)")
	fs.DurationVar(&c.IdleTimeout, "state-idle-timeout", 30*time.Minute, "forget a container's windows after this long without telemetry")
	fs.DurationVar(&c.ScanWindow, "scan-window", time.Minute, "sliding window of the scan fan-out counters (distinct destination ports and hosts, attempts)")
	fs.Float64Var(&c.CPUSustainedPercent, "cpu-sustained-percent", 80, "CPU percent (of the container's limit, or of one core when unlimited) above which sustained-CPU time runs")
	fs.DurationVar(&c.DropWindow, "drop-window", 10*time.Minute, "how long a file added or changed in a container counts as dropped for exec-after-drop")
	fs.Float64Var(&c.SpikeFactor, "traffic-spike-factor", 10, "a network rate this many times above the container's recent average is a traffic spike")
	fs.Float64Var(&c.SpikeMinBytes, "traffic-spike-min-bytes", 1<<20, "a traffic spike also needs at least this many bytes per second")
	fs.DurationVar(&c.BaselineLearning, "baseline-learning", time.Hour, "learning period of an image's behaviour baseline from its first sight (0: no baselines)")
	fs.IntVar(&c.BaselineMaxEntries, "baseline-max-entries", 512, "most entries of each set of a baseline (executables, parent-child pairs, listen ports, destinations)")
	fs.DurationVar(&c.BaselineFlush, "baseline-flush-interval", 5*time.Second, "how often learned baseline entries are written to the NATS KV bucket")
	fs.IntVar(&c.EvidenceItems, "evidence-items", 16, "most items of each per-container evidence list a threat carries (log lines, file changes, connections, execs)")
	fs.DurationVar(&c.IncidentWindow, "incident-window", 10*time.Minute, "threats of a container less than this apart are one incident; a repeat of a rule in an incident is counted, not published (0: publish every threat alone)")
}

// Validate checks c.
func (c *Config) Validate() error {
	var errs []error
	if c.MaxContainers < 1 {
		errs = append(errs, errors.New("state-max-containers must be positive"))
	}
	if c.MaxWindowEntries < 1 {
		errs = append(errs, errors.New("state-max-window-entries must be positive"))
	}
	if c.IdleTimeout <= 0 || c.ScanWindow <= 0 || c.DropWindow <= 0 {
		errs = append(errs, errors.New("state-idle-timeout, scan-window and drop-window must be positive"))
	}
	if c.CPUSustainedPercent <= 0 {
		errs = append(errs, errors.New("cpu-sustained-percent must be positive"))
	}
	if c.SpikeFactor <= 1 {
		errs = append(errs, errors.New("traffic-spike-factor must be above 1"))
	}
	if c.BaselineLearning < 0 {
		errs = append(errs, errors.New("baseline-learning must not be negative"))
	}
	if c.BaselineMaxEntries < 1 {
		errs = append(errs, errors.New("baseline-max-entries must be positive"))
	}
	if c.EvidenceItems < 0 || c.EvidenceItems > event.MaxEvidence {
		errs = append(errs, fmt.Errorf("evidence-items must be between 0 and %d", event.MaxEvidence))
	}
	if c.IncidentWindow < 0 {
		errs = append(errs, errors.New("incident-window must not be negative"))
	}
	if c.BaselineFlush <= 0 {
		errs = append(errs, errors.New("baseline-flush-interval must be positive"))
	}
	return errors.Join(errs...)
}
