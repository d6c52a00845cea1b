package anomaly

// Feature indexes into a Vector. The order is fixed: it is the column order
// of the model's training data and of bench/anomaly's CSV files.
const (
	FeatCPUPercent = iota
	FeatMemoryBytes
	FeatNetRxBytesPerSec
	FeatNetTxBytesPerSec
	FeatProcessCount
	FeatConnectionCount
	FeatNewProcessRate

	// NumFeatures is the length of a Vector.
	NumFeatures
)

// names are the feature names, indexed by Feat*.
var names = [NumFeatures]string{
	"cpu_percent",
	"memory_bytes",
	"net_rx_bytes_per_sec",
	"net_tx_bytes_per_sec",
	"process_count",
	"connection_count",
	"new_process_rate",
}

// Names returns the feature names in Vector order.
func Names() []string { return names[:] }

// Name returns the name of feature i (a Feat* constant), or "" if out of range.
func Name(i int) string {
	if i < 0 || i >= NumFeatures {
		return ""
	}
	return names[i]
}

// Vector is one observation in feature order.
type Vector [NumFeatures]float64

// Features is one observation of a container, computed by the state tracker
// from its telemetry at each resource sample (event.Resource):
//
//   - CPUPercent: Resource.CPUPercent, percent of one core (200 = two cores).
//   - MemoryBytes: Resource.MemoryBytes.
//   - NetRxBytesPerSec, NetTxBytesPerSec: the increase of Resource.NetRxBytes
//     (NetTxBytes) since the container's previous resource sample, divided by
//     the seconds between the two samples; 0 for the first sample and when
//     the counter went backwards (restart).
//   - ProcessCount: Resource.PIDs, the tasks in the container's cgroup.
//   - ConnectionCount: the container's sockets currently in state
//     established or syn_sent, from network telemetry (opened minus closed).
//   - NewProcessRate: process-start events of the container since its
//     previous resource sample, divided by the seconds between the samples.
//
// Values are used as they are (no scaling): an Isolation Forest is
// insensitive to the scale of each feature. NaN, ±Inf and negative values
// are clamped to 0 by Vector.
type Features struct {
	CPUPercent       float64
	MemoryBytes      float64
	NetRxBytesPerSec float64
	NetTxBytesPerSec float64
	ProcessCount     float64
	ConnectionCount  float64
	NewProcessRate   float64
}

// Vector returns f in feature order, each value made finite and non-negative.
func (f Features) Vector() Vector {
	v := Vector{
		FeatCPUPercent:       f.CPUPercent,
		FeatMemoryBytes:      f.MemoryBytes,
		FeatNetRxBytesPerSec: f.NetRxBytesPerSec,
		FeatNetTxBytesPerSec: f.NetTxBytesPerSec,
		FeatProcessCount:     f.ProcessCount,
		FeatConnectionCount:  f.ConnectionCount,
		FeatNewProcessRate:   f.NewProcessRate,
	}
	for i, x := range v {
		// !(x > 0) also catches NaN; the upper bound keeps float32 finite.
		switch {
		case !(x > 0):
			v[i] = 0
		case x > maxValue:
			v[i] = maxValue
		}
	}
	return v
}

// maxValue bounds every feature so it stays finite as a float32 (1e30 bytes/s
// is not a real rate, but a hostile or buggy counter must not produce Inf).
const maxValue = 1e30
