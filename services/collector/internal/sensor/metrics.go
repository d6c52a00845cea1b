package sensor

import (
	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics of the sensor. Names are part of the collector's admin endpoint.
type metrics struct {
	records      *prometheus.CounterVec // kernel records read, by kind
	events       *prometheus.CounterVec // telemetry emitted, by telemetry kind
	decodeErrors prometheus.Counter
	enrichWaits  prometheus.Counter
	hashed       prometheus.Counter
	latency      prometheus.Histogram
	drops        prometheus.CounterFunc
	dropsMap     *ebpf.Map // the kernel's per-CPU counter behind drops
	programs     prometheus.Gauge
}

func newMetrics(drops *ebpf.Map, programs int) *metrics {
	m := &metrics{
		dropsMap: drops,
		records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whalewatch_sensor_records_total",
			Help: "Records read from the kernel sensor's ring buffer, by kind (exec, fork, exit, syscall, tcp_state).",
		}, []string{"kind"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whalewatch_sensor_events_total",
			Help: "Telemetry events the kernel sensor emitted, by telemetry kind.",
		}, []string{"telemetry"}),
		decodeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "whalewatch_sensor_decode_errors_total",
			Help: "Kernel sensor records that were malformed and skipped.",
		}),
		enrichWaits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "whalewatch_sensor_enrich_waits_total",
			Help: "Kernel sensor events that waited for their container's metadata.",
		}),
		hashed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "whalewatch_sensor_executables_hashed_total",
			Help: "Executables read and digested (sha256) by the kernel sensor; cached digests are not counted.",
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "whalewatch_sensor_latency_seconds",
			Help:    "Time from the kernel event to its telemetry being handed to the collector's queue.",
			Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5},
		}),
		programs: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "whalewatch_sensor_programs_attached",
			Help: "Kernel sensor programs attached to tracepoints.",
		}),
	}
	m.programs.Set(float64(programs))
	m.drops = prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "whalewatch_sensor_ring_drops_total",
		Help: "Kernel sensor records lost because the ring buffer was full (counted in the kernel).",
	}, func() float64 { return float64(dropCount(drops)) })
	return m
}

func (m *metrics) register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.records, m.events, m.decodeErrors, m.enrichWaits, m.hashed, m.latency, m.drops, m.programs} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// dropCount sums the per-CPU drop counter.
func dropCount(drops *ebpf.Map) uint64 {
	if drops == nil {
		return 0
	}
	var per []uint64
	if err := drops.Lookup(uint32(0), &per); err != nil {
		return 0
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n
}

// Lost is how many records the kernel could not put in the ring (it was
// full) since the sensor was loaded: events nobody will see, which the
// collector makes up for with a docker diff reconciliation.
func (s *Sensor) Lost() uint64 { return dropCount(s.m.dropsMap) }
