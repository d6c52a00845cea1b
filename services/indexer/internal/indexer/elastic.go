package indexer

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/elastic/go-elasticsearch/v8"
	"github.com/elastic/go-elasticsearch/v8/esapi"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/event"
)

// NewClient builds the Elasticsearch client from cfg. The client retries a
// request on another node after a connection error or a 502/503/504, a few
// times within one Write; everything else is left to JetStream redelivery.
func NewClient(cfg ESConfig) (*elasticsearch.Client, error) {
	var ca []byte
	if cfg.CACert != "" {
		var err error
		if ca, err = os.ReadFile(cfg.CACert); err != nil {
			return nil, fmt.Errorf("elasticsearch-ca-cert: %w", err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(ca) {
			return nil, fmt.Errorf("elasticsearch-ca-cert %s: no PEM certificate in the file", cfg.CACert)
		}
	}
	c, err := elasticsearch.NewClient(elasticsearch.Config{
		Addresses:    cfg.Addresses(),
		APIKey:       cfg.APIKey,
		Username:     cfg.Username,
		Password:     cfg.Password,
		CACert:       ca,
		MaxRetries:   2,
		RetryBackoff: func(attempt int) time.Duration { return time.Duration(attempt) * 100 * time.Millisecond },
	})
	if err != nil {
		return nil, fmt.Errorf("elasticsearch client: %w", err)
	}
	return c, nil
}

// Ping is a readiness check: Elasticsearch answers.
func Ping(c *elasticsearch.Client) func(context.Context) error {
	return func(ctx context.Context) error {
		res, err := c.Ping(c.Ping.WithContext(ctx))
		if err != nil {
			return fmt.Errorf("elasticsearch unreachable: %w", err)
		}
		defer res.Body.Close()
		if res.IsError() {
			return fmt.Errorf("elasticsearch answered %s", res.Status())
		}
		return nil
	}
}

// Document outcomes, the values of the outcome label.
const (
	outcomeCreated   = "created"   // 201
	outcomeDuplicate = "duplicate" // 409: indexed before (a redelivery)
	outcomeRetry     = "retry"     // transient: nak'ed, tried again
	outcomeRejected  = "rejected"  // permanent: dead-lettered
)

// ESSink writes events to Elasticsearch data streams with the _bulk API:
// op create, _id = event.id, so that redelivered events are stored once.
type ESSink struct {
	client   *elasticsearch.Client
	ns       string
	timeout  time.Duration
	maxBytes int
	log      *slog.Logger

	docs     *prometheus.CounterVec
	duration prometheus.Histogram
	failures *prometheus.CounterVec
	bufs     sync.Pool
}

// NewESSink returns a sink writing through client; it owns client from now
// on and closes it on Close.
func NewESSink(client *elasticsearch.Client, cfg ESConfig, log *slog.Logger, reg prometheus.Registerer) *ESSink {
	s := &ESSink{
		client:   client,
		ns:       cfg.Namespace,
		timeout:  cfg.Timeout,
		maxBytes: cfg.MaxBulkBytes,
		log:      log,
		docs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whalewatch_indexer_documents_total",
			Help: "Documents sent to Elasticsearch, by dataset and outcome (created, duplicate, retry, rejected).",
		}, []string{"dataset", "outcome"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "whalewatch_indexer_bulk_request_seconds",
			Help:    "Duration of Elasticsearch _bulk requests, client retries included.",
			Buckets: prometheus.ExponentialBuckets(0.001, 3, 10),
		}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whalewatch_indexer_bulk_failures_total",
			Help: "_bulk requests that failed as a whole (every document retried), by reason (transport, http_<status>, response).",
		}, []string{"reason"}),
		bufs: sync.Pool{New: func() any { return new(bytes.Buffer) }},
	}
	reg.MustRegister(s.docs, s.duration, s.failures)
	return s
}

// pending is one document of a bulk request: its place in the batch.
type pending struct {
	i       int
	dataset string
}

// actionLine is the NDJSON action of one document.
type actionLine struct {
	Create actionMeta `json:"create"`
}

type actionMeta struct {
	Index string `json:"_index"`
	ID    string `json:"_id"`
}

// Write indexes batch with as few _bulk requests as the byte limit allows.
func (s *ESSink) Write(ctx context.Context, batch []*event.Event) []error {
	errs := make([]error, len(batch))
	buf := s.bufs.Get().(*bytes.Buffer)
	buf.Reset()
	enc := json.NewEncoder(buf) // Encode appends the newline NDJSON needs
	var chunk []pending
	for i, e := range batch {
		ds, err := Dataset(e)
		if err != nil {
			errs[i] = err
			s.docs.WithLabelValues("unknown", outcomeRejected).Inc()
			continue
		}
		start := buf.Len()
		_ = enc.Encode(actionLine{actionMeta{Index: DataStreamType + "-" + ds + "-" + s.ns, ID: e.Event.ID}})
		// The same encoding as event.Marshal, so the stored _source is the
		// document as published.
		if err := enc.Encode(e); err != nil {
			buf.Truncate(start)
			errs[i] = bus.Permanent(fmt.Errorf("encoding event: %w", err))
			s.docs.WithLabelValues(ds, outcomeRejected).Inc()
			continue
		}
		if buf.Len() > s.maxBytes && start > 0 {
			tail := slices.Clone(buf.Bytes()[start:])
			buf.Truncate(start)
			s.send(ctx, buf.Bytes(), chunk, errs)
			buf.Reset()
			buf.Write(tail)
			chunk = chunk[:0]
		}
		chunk = append(chunk, pending{i: i, dataset: ds})
	}
	if len(chunk) > 0 {
		s.send(ctx, buf.Bytes(), chunk, errs)
	}
	if buf.Cap() <= 2*s.maxBytes { // don't keep an outsized buffer
		s.bufs.Put(buf)
	}
	return errs
}

// bulkResponse is the part of a _bulk response the sink reads.
type bulkResponse struct {
	Errors bool                  `json:"errors"`
	Items  []map[string]bulkItem `json:"items"`
}

type bulkItem struct {
	Status int      `json:"status"`
	Error  *esError `json:"error"`
	Index  string   `json:"_index"`
	ID     string   `json:"_id"`
}

// esError is Elasticsearch's error object.
type esError struct {
	Type     string   `json:"type"`
	Reason   string   `json:"reason"`
	CausedBy *esError `json:"caused_by"`
}

func (e *esError) String() string {
	if e == nil {
		return "no error details"
	}
	s := e.Type + ": " + e.Reason
	if e.CausedBy != nil && e.CausedBy.Reason != "" {
		s += " (caused by " + e.CausedBy.Type + ": " + e.CausedBy.Reason + ")"
	}
	return event.Truncate(s, 512)
}

// send performs one _bulk request for chunk and sets the errors of its events.
func (s *ESSink) send(parent context.Context, body []byte, chunk []pending, errs []error) {
	failAll := func(reason string, err error) {
		s.failures.WithLabelValues(reason).Inc()
		if parent.Err() == nil { // not shutting down
			s.log.Warn("bulk request failed; its events will be retried", "documents", len(chunk), "err", err)
		}
		for _, p := range chunk {
			errs[p.i] = err
			s.docs.WithLabelValues(p.dataset, outcomeRetry).Inc()
		}
	}

	ctx, cancel := context.WithTimeout(parent, s.timeout)
	defer cancel()
	start := time.Now()
	res, err := esapi.BulkRequest{
		Body:   bytes.NewReader(body),
		Header: http.Header{"Content-Type": {"application/x-ndjson"}},
	}.Do(ctx, s.client)
	if err != nil {
		s.duration.Observe(time.Since(start).Seconds())
		failAll("transport", fmt.Errorf("elasticsearch bulk request: %w", err))
		return
	}
	defer res.Body.Close()
	if res.IsError() {
		s.duration.Observe(time.Since(start).Seconds())
		var e struct {
			Error esError `json:"error"`
		}
		_ = json.NewDecoder(io.LimitReader(res.Body, 64<<10)).Decode(&e)
		failAll("http_"+strconv.Itoa(res.StatusCode),
			fmt.Errorf("elasticsearch bulk request: %s: %s", res.Status(), e.Error.String()))
		return
	}
	var br bulkResponse
	err = json.NewDecoder(res.Body).Decode(&br)
	s.duration.Observe(time.Since(start).Seconds())
	if err != nil {
		failAll("response", fmt.Errorf("elasticsearch bulk response: %w", err))
		return
	}
	if len(br.Items) != len(chunk) {
		failAll("response", fmt.Errorf("elasticsearch bulk response has %d items for %d documents", len(br.Items), len(chunk)))
		return
	}
	for k, p := range chunk {
		var it bulkItem
		for _, v := range br.Items[k] { // one key: the op
			it = v
		}
		outcome, err := itemOutcome(it)
		errs[p.i] = err
		s.docs.WithLabelValues(p.dataset, outcome).Inc()
	}
}

// itemOutcome classifies one bulk item result.
func itemOutcome(it bulkItem) (string, error) {
	switch {
	case it.Status >= 200 && it.Status < 300:
		return outcomeCreated, nil
	case it.Status == http.StatusConflict && it.Error != nil && it.Error.Type == "version_conflict_engine_exception":
		return outcomeDuplicate, nil
	}
	err := fmt.Errorf("elasticsearch refused document %s in %s with %d: %s",
		event.Truncate(it.ID, 64), event.Truncate(it.Index, 256), it.Status, it.Error)
	if transientItem(it) {
		return outcomeRetry, err
	}
	return outcomeRejected, bus.Permanent(err)
}

// transientItem reports whether a refused item may be taken later: the
// cluster was busy (429, es_rejected_execution_exception) or failing (5xx).
// Any other refusal (mapping conflicts, invalid values) will never succeed.
func transientItem(it bulkItem) bool {
	if it.Error != nil && it.Error.Type == "es_rejected_execution_exception" {
		return true
	}
	return it.Status == http.StatusTooManyRequests || it.Status >= 500 || it.Status < 400
}

// Close closes the client once in-flight requests are done or ctx ends.
func (s *ESSink) Close(ctx context.Context) error {
	if err := s.client.Close(ctx); err != nil && !errors.Is(err, elasticsearch.ErrAlreadyClosed) {
		return fmt.Errorf("closing elasticsearch client: %w", err)
	}
	return nil
}
