// Package state is what the detector remembers between events: per-container
// windows and counters, per-image behaviour baselines, and anomaly scores.
//
// The rules engine does not keep state itself. For every event the detector
// first lets the Tracker observe it, and the Tracker answers with a Snapshot:
// the facts about the event's container and image at that moment. Rules read
// the snapshot as `state.<field>` (see the field comments for names), so a
// stateful detection is still an ordinary YAML rule with a severity, ATT&CK
// mapping and exceptions that the security team owns.
package state

import "github.com/whalewatch/whalewatch/pkg/event"

// Snapshot is the state relevant to one event, after observing it. Zero
// values mean "nothing known" and never trigger a rule on their own.
type Snapshot struct {
	// Scan fan-out over the scan window, per container (network telemetry).
	DistinctDestPorts int `expr:"distinct_dest_ports"` // distinct remote ports of outbound connections
	DistinctDestHosts int `expr:"distinct_dest_hosts"` // distinct remote addresses of outbound connections
	ConnAttempts      int `expr:"conn_attempts"`       // outbound connection attempts (established or SYN-SENT)

	// Sustained CPU, per container (resource telemetry).
	CPUHighSeconds     float64 `expr:"cpu_high_seconds"`     // how long CPU has stayed above the sustained threshold, continuously
	CPUBaselinePercent float64 `expr:"cpu_baseline_percent"` // the image's usual CPU % (of one core); 0 while unknown
	CPUTopProcess      string  `expr:"cpu_top_process"`      // while CPU is high: the executable it is blamed on (the sample's process, else the latest exec)
	CPUTopProcessNew   bool    `expr:"cpu_top_process_new"`  // that executable was new to the image's baseline when it ran

	// Traffic, per container (resource telemetry).
	TxBytesPerSec float64 `expr:"tx_bytes_per_sec"`
	RxBytesPerSec float64 `expr:"rx_bytes_per_sec"`
	TrafficSpike  bool    `expr:"traffic_spike"` // rate far above the container's recent baseline

	// Dropped binaries, per container (file then process telemetry).
	ExecOfDroppedFile bool   `expr:"exec_of_dropped_file"` // this exec's executable appeared or changed in the container within the window
	DroppedPath       string `expr:"dropped_path"`         // that file's path

	// Processes and configuration, per container (process and lifecycle
	// telemetry, after config telemetry).
	ParentServesNetwork bool `expr:"parent_serves_network"` // the exec's parent listens or accepts on the network
	ParentKnownService  bool `expr:"parent_known_service"`  // ... on a port the image's baseline knows (its own service)
	Healthcheck         bool `expr:"healthcheck"`           // this docker exec is the container's configured health check
	ConfigKnown         bool `expr:"config_known"`          // the container's configuration was seen

	// Behaviour baseline, per image. All New* are false while the image's
	// baseline is still learning, so rules need not test BaselineLearning.
	BaselineLearning bool `expr:"baseline_learning"`
	NewProcess       bool `expr:"new_process"`      // executable never seen for this image
	NewParentChild   bool `expr:"new_parent_child"` // parent→child executable pair never seen
	NewListenPort    bool `expr:"new_listen_port"`  // listening port never seen
	NewDestination   bool `expr:"new_destination"`  // outbound destination (address:port) never seen

	// Anomaly model, per image (resource telemetry).
	AnomalyScore    float64  `expr:"anomaly_score"`    // 0..1, higher is more unusual; 0 while the model is training
	AnomalyFeatures []string `expr:"anomaly_features"` // features that made the vector unusual, most unusual first
}

// Tracker observes every event the detector consumes, in order per
// container, and returns the snapshot for it. Implementations bound their
// memory and expire a container's state when it dies.
type Tracker interface {
	Observe(e *event.Event) Snapshot
}

// Nop is a Tracker that knows nothing.
type Nop struct{}

// Observe returns the zero Snapshot.
func (Nop) Observe(*event.Event) Snapshot { return Snapshot{} }
