package indexer

import (
	"context"
	"flag"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/subject"
	"github.com/whalewatch/whalewatch/testkit/esstub"
	"github.com/whalewatch/whalewatch/testkit/natstest"
)

// BenchmarkThroughput is the indexer end to end, NATS to Elasticsearch:
// WHALEWATCH_BENCH_DOCS (default 100,000) telemetry events of about 1 KB are
// published first, then the indexer starts and the clock runs until the
// stand-in (esstub.Fast, which answers at once) holds every one of them and
// JetStream has every ack. One iteration is one whole run: use -benchtime 1x.
// docs/s is the throughput; cpu-s/100k is the CPU time of the whole process
// (indexer, in-process NATS server and stand-in) per 100,000 documents.
// WHALEWATCH_BENCH_STUB=full uses the full stub instead (see below).
// WHALEWATCH_BENCH_ARGS adds indexer flags, e.g. "-bulk-gzip".
// Run: bench/indexer/run.sh
func BenchmarkThroughput(b *testing.B) {
	n := 100_000
	if v := os.Getenv("WHALEWATCH_BENCH_DOCS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			b.Fatal(err)
		}
	}
	var docs, cpu, elapsed float64
	for b.Loop() {
		b.StopTimer()
		d, c := throughputRun(b, n, strings.Fields(os.Getenv("WHALEWATCH_BENCH_ARGS")))
		b.StartTimer()
		docs += float64(n)
		cpu += c.Seconds()
		elapsed += d.Seconds()
	}
	b.ReportMetric(docs/elapsed, "docs/s")
	b.ReportMetric(cpu/docs*100_000, "cpu-s/100k")
}

// benchEvent is a telemetry event of about 1 KB, complete ECS as a
// publisher that calls event.Complete sends it (the indexer stores it as it
// arrives), or with WHALEWATCH_BENCH_LEGACY=1 as an older publisher sends it
// (the indexer decodes, completes and encodes it).
func benchEvent(i int) *event.Event {
	e := telemetry(event.Telemetries[i%len(event.Telemetries)])
	if os.Getenv("WHALEWATCH_BENCH_LEGACY") == "1" {
		e.Message = "process seen: " + strings.Repeat("x", 290)
		return e
	}
	e.Message = "process seen: " + strings.Repeat("x", 20)
	e.Complete(&event.Agent{Name: e.Host.Name, Type: "whalewatch-collector", Version: "bench"})
	return e
}

func throughputRun(b *testing.B, n int, args []string) (time.Duration, time.Duration) {
	ns := natstest.Server(b)
	_, js := natstest.Connect(b, ns)
	var sc bus.StreamsConfig
	sc.RegisterFlags(flag.NewFlagSet("streams", flag.ContinueOnError))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := bus.EnsureStreams(ctx, js, sc); err != nil {
		b.Fatal(err)
	}
	size := 0
	for i := range n {
		e := benchEvent(i)
		data, err := event.Marshal(e)
		if err != nil {
			b.Fatal(err)
		}
		size += len(data)
		m := nats.NewMsg(subject.ForTelemetry(e))
		m.Data = data
		if _, err := js.PublishMsgAsync(m, jetstream.WithMsgID(e.Event.ID)); err != nil {
			b.Fatal(err)
		}
		if i%1000 == 999 { // a loaded machine stalls a longer queue
			select {
			case <-js.PublishAsyncComplete():
			case <-ctx.Done():
				b.Fatal("publishing timed out")
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		b.Fatal("publishing timed out")
	}
	b.Logf("%d events published, %d bytes each on average", n, size/n)

	// The full stub (WHALEWATCH_BENCH_STUB=full) parses and stores every
	// document, as the functional tests see it; Fast answers at once.
	var es interface {
		Created() int
		Duplicates() int
	}
	var esURL string
	if os.Getenv("WHALEWATCH_BENCH_STUB") == "full" {
		full := esstub.New(b)
		es, esURL = fullCounter{full}, full.URL
	} else {
		fast := esstub.NewFast(b)
		es, esURL = fast, fast.URL
	}
	cfg, err := parseConfig(b, append([]string{
		"-nats-url", ns.ClientURL(), "-elasticsearch-url", esURL, "-http-addr", "", "-log-level", "error",
	}, args...), nil)
	if err != nil {
		b.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cpu0 := cpuTime()
	start := time.Now()
	go func() { done <- run(runCtx, cfg, testLogger(b), prometheus.NewRegistry(), nil) }()
	var d time.Duration
	for deadline := time.Now().Add(5 * time.Minute); ; {
		if es.Created() == n {
			if info, err := consumerInfo(ctx, js, bus.StreamTelemetry, ConsumerTelemetry); err == nil && info.NumAckPending == 0 && info.NumPending == 0 {
				d = time.Since(start)
				break
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("after 5 min: %d of %d documents", es.Created(), n)
		}
		time.Sleep(2 * time.Millisecond) // polling interval of the measurement
	}
	c := cpuTime() - cpu0
	stop()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	if dups := es.Duplicates(); dups != 0 {
		b.Logf("%d duplicate items (redeliveries)", dups)
	}
	return d, c
}

func consumerInfo(ctx context.Context, js jetstream.JetStream, stream, durable string) (*jetstream.ConsumerInfo, error) {
	c, err := js.Consumer(ctx, stream, durable)
	if err != nil {
		return nil, err
	}
	return c.Info(ctx)
}

// cpuTime is the user and system CPU time of this process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// fullCounter counts what the full stub stored.
type fullCounter struct{ s *esstub.Server }

func (f fullCounter) Created() int { return f.s.DocCount() }

func (f fullCounter) Duplicates() int {
	n := 0
	for _, r := range f.s.BulkRequests() {
		if r.Errors {
			n++ // requests, not items: a lower bound
		}
	}
	return n
}
