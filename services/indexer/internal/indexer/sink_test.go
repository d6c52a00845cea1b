package indexer

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/testkit/esstub"
)

// memorySink is the in-memory Sink of unit tests: documents by data stream
// and id, with the same routing and idempotence as the ES sink.
type memorySink struct {
	ns   string
	mu   sync.Mutex
	fail error // returned for every event while set
	docs map[string]map[string]string
}

func newMemorySink(ns string) *memorySink {
	return &memorySink{ns: ns, docs: map[string]map[string]string{}}
}

func (m *memorySink) Write(_ context.Context, docs []Doc) []error {
	m.mu.Lock()
	defer m.mu.Unlock()
	errs := make([]error, len(docs))
	for i, d := range docs {
		if m.fail != nil {
			errs[i] = m.fail
			continue
		}
		ds := DataStreamType + "-" + d.Dataset + "-" + m.ns
		if m.docs[ds] == nil {
			m.docs[ds] = map[string]string{}
		}
		if _, ok := m.docs[ds][d.ID]; !ok {
			m.docs[ds][d.ID] = string(d.Prefix) + string(d.Body)
		}
	}
	return errs
}

func (m *memorySink) Close(context.Context) error { return nil }

func (m *memorySink) stored(ds string) map[string]string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]string{}
	for k, v := range m.docs[ds] {
		out[k] = v
	}
	return out
}

// sinkUnderTest is a Sink and a way to read back what it stored.
type sinkUnderTest struct {
	sink   Sink
	stored func(dataStream string) map[string]string // id -> source
}

func newESSinkUnderTest(tb testing.TB, opts ...esstub.Option) (*ESSink, *esstub.Server) {
	tb.Helper()
	es := esstub.New(tb, opts...)
	cfg, err := parseConfig(tb, []string{"-elasticsearch-url", es.URL, "-elasticsearch-timeout", "5s"}, nil)
	require.NoError(tb, err)
	client, err := NewClient(cfg.Elasticsearch)
	require.NoError(tb, err)
	require.NoError(tb, InstallTemplates(context.Background(), client, cfg.Retention))
	s := NewESSink(client, cfg.Elasticsearch, testLogger(tb), prometheus.NewRegistry())
	tb.Cleanup(func() { _ = s.Close(context.Background()) })
	return s, es
}

func stubStored(es *esstub.Server) func(string) map[string]string {
	return func(ds string) map[string]string {
		out := map[string]string{}
		for _, d := range es.Docs(ds) {
			out[d.ID] = string(d.Source)
		}
		return out
	}
}

// TestSinkContract runs the Sink contract against every implementation.
func TestSinkContract(t *testing.T) {
	t.Parallel()
	impls := map[string]func(t *testing.T) sinkUnderTest{
		"elasticsearch": func(t *testing.T) sinkUnderTest {
			s, es := newESSinkUnderTest(t)
			return sinkUnderTest{sink: s, stored: stubStored(es)}
		},
		"memory": func(t *testing.T) sinkUnderTest {
			m := newMemorySink("default")
			return sinkUnderTest{sink: m, stored: m.stored}
		},
	}
	for name, newSink := range impls {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			testSinkContract(t, newSink)
		})
	}
}

func testSinkContract(t *testing.T, newSink func(t *testing.T) sinkUnderTest) {
	ctx := context.Background()

	t.Run("stores each event in its data stream as published", func(t *testing.T) {
		t.Parallel()
		s := newSink(t)
		batch := []*event.Event{threat("suspicious-tool-netcat"), telemetry(event.TelemetryProcess), telemetry(event.TelemetryLog)}
		require.Equal(t, []error{nil, nil, nil}, s.sink.Write(ctx, docsOf(t, batch...)))
		for _, e := range batch {
			ds, err := DataStream(e, "default")
			require.NoError(t, err)
			require.Equal(t, storedJSON(t, e), s.stored(ds)[e.Event.ID], "document %s in %s", e.Event.ID, ds)
		}
		require.Len(t, s.stored("logs-whalewatch.threat-default"), 1)
	})

	t.Run("a rewritten event is stored once and succeeds", func(t *testing.T) {
		t.Parallel()
		s := newSink(t)
		e := threat("r")
		require.Equal(t, []error{nil}, s.sink.Write(ctx, docsOf(t, e)))
		require.Equal(t, []error{nil, nil}, s.sink.Write(ctx, docsOf(t, e, e)))
		require.Len(t, s.stored("logs-whalewatch.threat-default"), 1)
	})

	t.Run("empty batch", func(t *testing.T) {
		t.Parallel()
		require.Empty(t, newSink(t).sink.Write(ctx, nil))
	})

	t.Run("concurrent writes", func(t *testing.T) {
		t.Parallel()
		s := newSink(t)
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				batch := make([]*event.Event, 25)
				for i := range batch {
					batch[i] = telemetry(event.TelemetryNetwork)
				}
				for _, err := range s.sink.Write(ctx, docsOf(t, batch...)) {
					require.NoError(t, err)
				}
			})
		}
		wg.Wait()
		require.Len(t, s.stored("logs-whalewatch.network-default"), 100)
	})

	t.Run("close", func(t *testing.T) {
		t.Parallel()
		require.NoError(t, newSink(t).sink.Close(ctx))
	})
}

func TestDataStream(t *testing.T) {
	t.Parallel()
	response := telemetry(event.TelemetryProcess)
	response.Whalewatch.Telemetry = ""
	response.Event.Dataset = event.DatasetResponse
	tests := []struct {
		name string
		e    *event.Event
		want string
	}{
		{"threat", threat("x"), "logs-whalewatch.threat-ns"},
		{"process", telemetry(event.TelemetryProcess), "logs-whalewatch.process-ns"},
		{"lifecycle", telemetry(event.TelemetryLifecycle), "logs-whalewatch.lifecycle-ns"},
		{"config", telemetry(event.TelemetryConfig), "logs-whalewatch.config-ns"},
		{"resource", telemetry(event.TelemetryResource), "logs-whalewatch.resource-ns"},
		{"response", response, "logs-whalewatch.response-ns"},
	}
	for _, tt := range tests {
		got, err := DataStream(tt.e, "ns")
		require.NoError(t, err, tt.name)
		require.Equal(t, tt.want, got, tt.name)
	}
}

func TestItemOutcome(t *testing.T) {
	t.Parallel()
	e := func(typ string) *esError { return &esError{Type: typ, Reason: "why"} }
	tests := []struct {
		name      string
		item      bulkItem
		outcome   string
		permanent bool
	}{
		{"created", bulkItem{Status: 201}, outcomeCreated, false},
		{"already indexed", bulkItem{Status: 409, Error: e("version_conflict_engine_exception")}, outcomeDuplicate, false},
		{"too many requests", bulkItem{Status: 429, Error: e("es_rejected_execution_exception")}, outcomeRetry, false},
		{"rejected execution with another status", bulkItem{Status: 400, Error: e("es_rejected_execution_exception")}, outcomeRetry, false},
		{"shard unavailable", bulkItem{Status: 503, Error: e("unavailable_shards_exception")}, outcomeRetry, false},
		{"internal error", bulkItem{Status: 500, Error: e("exception")}, outcomeRetry, false},
		{"mapping conflict", bulkItem{Status: 400, Error: e("mapper_parsing_exception")}, outcomeRejected, true},
		{"document parsing", bulkItem{Status: 400, Error: e("document_parsing_exception")}, outcomeRejected, true},
		{"illegal argument", bulkItem{Status: 400, Error: e("illegal_argument_exception")}, outcomeRejected, true},
		{"other conflict", bulkItem{Status: 409, Error: e("something_else")}, outcomeRejected, true},
		{"write block", bulkItem{Status: 403, Error: e("cluster_block_exception")}, outcomeBlocked, false},
		{"read-only after disk watermark", bulkItem{Status: 429, Error: e("cluster_block_exception")}, outcomeBlocked, false},
		{"missing privilege", bulkItem{Status: 403, Error: e("security_exception")}, outcomeBlocked, false},
		{"missing index", bulkItem{Status: 404, Error: e("index_not_found_exception")}, outcomeBlocked, false},
		{"forbidden", bulkItem{Status: 403, Error: e("x")}, outcomeBlocked, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			outcome, err := itemOutcome(tt.item)
			require.Equal(t, tt.outcome, outcome)
			require.Equal(t, tt.outcome == outcomeCreated || tt.outcome == outcomeDuplicate, err == nil, "err %v", err)
			require.Equal(t, tt.permanent, bus.IsPermanent(err))
			var ops *OpsError
			require.Equal(t, tt.outcome == outcomeBlocked, errors.As(err, &ops), "operations error")
			if err != nil {
				require.Contains(t, err.Error(), tt.item.Error.Type, "the reason reaches the dead letter")
			}
		})
	}
}

// One batch, one request; per-item refusals fail only their events.
func TestESSinkPerItemOutcomes(t *testing.T) {
	t.Parallel()
	s, es := newESSinkUnderTest(t)
	ctx := context.Background()
	batch := docsOf(t, threat("a"), threat("b"), threat("c"), threat("d"))
	es.RejectNext(1, 400, "mapper_parsing_exception")
	es.RejectNext(1, 429, "es_rejected_execution_exception")
	es.RejectNext(1, 503, "unavailable_shards_exception")
	errs := s.Write(ctx, batch)
	require.Len(t, errs, 4)
	require.True(t, bus.IsPermanent(errs[0]), "mapper_parsing: %v", errs[0])
	require.ErrorContains(t, errs[0], "mapper_parsing_exception")
	require.ErrorContains(t, errs[0], "failed to parse field")
	for _, err := range errs[1:3] {
		require.Error(t, err)
		require.False(t, bus.IsPermanent(err), "%v", err)
	}
	require.NoError(t, errs[3])
	require.Len(t, es.BulkRequests(), 1)
	require.Equal(t, "application/x-ndjson", es.BulkRequests()[0].ContentType)

	// The retried ones succeed; the one already stored answers 409 and succeeds too.
	require.Equal(t, []error{nil, nil, nil}, s.Write(ctx, batch[1:]))
	require.Len(t, es.Docs("logs-whalewatch.threat-default"), 3)
	require.Equal(t, "whalewatch-threat", es.DataStreams()["logs-whalewatch.threat-default"].Template,
		"the whalewatch templates must outrank the built-in logs template")

	require.Equal(t, 3.0, testutil.ToFloat64(s.docs.WithLabelValues(event.DatasetThreat, outcomeCreated)))
	require.Equal(t, 1.0, testutil.ToFloat64(s.docs.WithLabelValues(event.DatasetThreat, outcomeDuplicate)))
	require.Equal(t, 2.0, testutil.ToFloat64(s.docs.WithLabelValues(event.DatasetThreat, outcomeRetry)))
	require.Equal(t, 1.0, testutil.ToFloat64(s.docs.WithLabelValues(event.DatasetThreat, outcomeRejected)))
}

// A request that fails as a whole fails every event transiently.
func TestESSinkWholeRequestFailures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		break_ func(*esstub.Server, bool)
		reason string
	}{
		{"connection lost", (*esstub.Server).SetDown, "transport"},
		{"503", (*esstub.Server).SetUnavailable, "http_503"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, es := newESSinkUnderTest(t)
			batch := docsOf(t, threat("a"), telemetry(event.TelemetryProcess))
			tt.break_(es, true)
			errs := s.Write(context.Background(), batch)
			require.Len(t, errs, 2)
			for _, err := range errs {
				require.Error(t, err)
				require.False(t, bus.IsPermanent(err), "%v", err)
			}
			require.Empty(t, es.AllDocs())
			require.Equal(t, 1.0, testutil.ToFloat64(s.failures.WithLabelValues(tt.reason)))
			tt.break_(es, false)
			require.Equal(t, []error{nil, nil}, s.Write(context.Background(), batch))
			require.Len(t, es.AllDocs(), 2)
		})
	}
}

// A request that takes longer than the timeout fails transiently.
func TestESSinkTimeout(t *testing.T) {
	t.Parallel()
	s, es := newESSinkUnderTest(t)
	es.SetDown(true)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	errs := s.Write(ctx, docsOf(t, threat("a")))
	require.Error(t, errs[0])
	require.False(t, bus.IsPermanent(errs[0]))
	require.True(t, errors.Is(errs[0], context.Canceled), "%v", errs[0])
}

// A batch larger than bulk-max-bytes is split, in order, without losing any.
func TestESSinkSplitsLargeBatches(t *testing.T) {
	t.Parallel()
	s, es := newESSinkUnderTest(t)
	s.maxBytes = 64 << 10
	batch := make([]*event.Event, 40)
	for i := range batch {
		e := telemetry(event.TelemetryLog)
		e.Message = strings.Repeat("x", 8<<10)
		batch[i] = e
	}
	for _, err := range s.Write(context.Background(), docsOf(t, batch...)) {
		require.NoError(t, err)
	}
	docs := es.Docs("logs-whalewatch.log-default")
	require.Len(t, docs, len(batch))
	for i, d := range docs {
		require.Equal(t, batch[i].Event.ID, d.ID)
	}
	require.Greater(t, len(es.BulkRequests()), 4)
}

// Credentials and a private CA reach Elasticsearch.
func TestESSinkTLSAndCredentials(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		opt  esstub.Option
		args []string
	}{
		{"basic auth", esstub.WithBasicAuth("elastic", "changeme"), []string{"-elasticsearch-username", "elastic", "-elasticsearch-password", "changeme"}},
		{"api key", esstub.WithAPIKey("aWQ6a2V5"), []string{"-elasticsearch-api-key", "aWQ6a2V5"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			es := esstub.New(t, esstub.WithTLS(), tt.opt)
			ca := filepath.Join(t.TempDir(), "ca.pem")
			require.NoError(t, os.WriteFile(ca, es.CACertPEM(), 0o600))
			cfg, err := parseConfig(t, append([]string{"-elasticsearch-url", es.URL, "-elasticsearch-ca-cert", ca}, tt.args...), nil)
			require.NoError(t, err)
			client, err := NewClient(cfg.Elasticsearch)
			require.NoError(t, err)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			require.NoError(t, Ping(client)(ctx))
			require.NoError(t, InstallTemplates(ctx, client, cfg.Retention))
			s := NewESSink(client, cfg.Elasticsearch, testLogger(t), prometheus.NewRegistry())
			require.Equal(t, []error{nil}, s.Write(ctx, docsOf(t, threat("a"))))
			require.Len(t, es.AllDocs(), 1)
		})
	}

	t.Run("wrong credentials are a transient failure", func(t *testing.T) {
		t.Parallel()
		es := esstub.New(t, esstub.WithAPIKey("right"))
		cfg, err := parseConfig(t, []string{"-elasticsearch-url", es.URL, "-elasticsearch-api-key", "wrong"}, nil)
		require.NoError(t, err)
		client, err := NewClient(cfg.Elasticsearch)
		require.NoError(t, err)
		s := NewESSink(client, cfg.Elasticsearch, testLogger(t), prometheus.NewRegistry())
		errs := s.Write(context.Background(), docsOf(t, threat("a")))
		require.ErrorContains(t, errs[0], "401")
		require.False(t, bus.IsPermanent(errs[0]), "fixing the credentials must let the events through")
		var ops *OpsError
		require.ErrorAs(t, errs[0], &ops, "an operations error: readiness reports it")
		require.Equal(t, "unauthorized", ops.Reason)
	})

	t.Run("bad CA file", func(t *testing.T) {
		t.Parallel()
		bad := filepath.Join(t.TempDir(), "ca.pem")
		require.NoError(t, os.WriteFile(bad, []byte("not a certificate"), 0o600))
		_, err := NewClient(ESConfig{URLs: "https://127.0.0.1:9200", CACert: bad})
		require.ErrorContains(t, err, "no PEM certificate")
	})
}
