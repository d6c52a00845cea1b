package collector

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the collector's own metrics; bus.EventPublisher adds
// whalewatch_bus_published_total.
type metrics struct {
	events         *prometheus.CounterVec
	dropped        *prometheus.CounterVec
	truncated      prometheus.Counter
	publishRetries prometheus.Counter
	dockerErrors   *prometheus.CounterVec
	reconnects     prometheus.Counter
	watched        prometheus.Gauge
	processMode    *prometheus.GaugeVec
	sourceMode     *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer, queueLen func() float64) *metrics {
	m := &metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whalewatch_collector_events_total",
			Help: "Telemetry events queued for publishing, by telemetry kind.",
		}, []string{"telemetry"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whalewatch_collector_dropped_total",
			Help: "Telemetry events dropped, by reason (queue_full, shutdown).",
		}, []string{"reason"}),
		truncated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "whalewatch_collector_truncated_total",
			Help: "Events with a field cut to its length limit (hostile or unusual input).",
		}),
		publishRetries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "whalewatch_collector_publish_retries_total",
			Help: "Failed publish attempts that were retried.",
		}),
		dockerErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whalewatch_collector_docker_errors_total",
			Help: "Failed Docker API calls, by operation (events, list, inspect, exec_inspect, top, stats, logs, diff).",
		}, []string{"op"}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "whalewatch_collector_docker_event_reconnects_total",
			Help: "Times the Docker event stream was reconnected after an error.",
		}),
		watched: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "whalewatch_collector_containers_watched",
			Help: "Running containers being watched.",
		}),
		processMode: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "whalewatch_collector_process_mode",
			Help: "The process source in use (1 for the running mode); whalewatch_collector_source_mode has every kind.",
		}, []string{"mode"}),
		sourceMode: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "whalewatch_collector_source_mode",
			Help: "The source chosen at start for each kind of telemetry (process, file, network, log), 1 for the mode in use: ebpf, proc-connector, fanotify, docker-top, docker-diff, proc-net, file, engine-api, off.",
		}, []string{"kind", "mode"}),
	}
	queue := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "whalewatch_collector_queue_length",
		Help: "Events waiting to be published.",
	}, queueLen)
	reg.MustRegister(m.events, m.dropped, m.truncated, m.publishRetries, m.dockerErrors, m.reconnects, m.watched, m.processMode, m.sourceMode, queue)
	return m
}
