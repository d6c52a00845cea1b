package indexer

import (
	"bytes"
	"compress/gzip"
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
		Addresses:  cfg.Addresses(),
		APIKey:     cfg.APIKey,
		Username:   cfg.Username,
		Password:   cfg.Password,
		CACert:     ca,
		MaxRetries: 2,
		// Bulk bodies of ECS JSON shrink about tenfold; BestSpeed costs the
		// least CPU per byte saved.
		CompressRequestBody:      cfg.Gzip,
		CompressRequestBodyLevel: gzip.BestSpeed,
		RetryBackoff:             func(attempt int) time.Duration { return time.Duration(attempt) * 100 * time.Millisecond },
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
	outcomeBlocked   = "blocked"   // operations error: nak'ed, tried again, readiness fails
	outcomeRejected  = "rejected"  // permanent: dead-lettered
)

// ESSink writes documents to Elasticsearch data streams with the _bulk API:
// op create, _id = event.id, so that redelivered documents are stored once.
type ESSink struct {
	client   *elasticsearch.Client
	ns       string
	timeout  time.Duration
	maxBytes int
	log      *slog.Logger

	docs     *prometheus.CounterVec
	duration prometheus.Histogram
	failures *prometheus.CounterVec
	ops      *prometheus.CounterVec
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
			Help: "Documents sent to Elasticsearch, by dataset and outcome (created, duplicate, retry, blocked, rejected).",
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
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "whalewatch_indexer_operations_errors_total",
			Help: "Documents or requests Elasticsearch refused for an operations reason (cluster_block, forbidden, not_found, unauthorized); retried.",
		}, []string{"reason"}),
		bufs: sync.Pool{New: func() any { return new(bytes.Buffer) }},
	}
	reg.MustRegister(s.docs, s.duration, s.failures, s.ops)
	return s
}

// Write indexes docs with as few _bulk requests as the byte limit allows.
func (s *ESSink) Write(ctx context.Context, docs []Doc) []error {
	errs := make([]error, len(docs))
	buf := s.bufs.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= 2*s.maxBytes { // don't keep an outsized buffer
			s.bufs.Put(buf)
		}
	}()
	first := 0
	buf.Reset()
	for i, d := range docs {
		start := buf.Len()
		appendDoc(buf, DataStreamType+"-"+d.Dataset+"-"+s.ns, d)
		if buf.Len() > s.maxBytes && i > first {
			tail := slices.Clone(buf.Bytes()[start:])
			buf.Truncate(start)
			s.send(ctx, buf.Bytes(), docs, first, i, errs)
			buf.Reset()
			buf.Write(tail)
			first = i
		}
	}
	if first < len(docs) {
		s.send(ctx, buf.Bytes(), docs, first, len(docs), errs)
	}
	return errs
}

// appendDoc appends the action line and the source line of d.
func appendDoc(buf *bytes.Buffer, index string, d Doc) {
	buf.WriteString(`{"create":{"_index":"`)
	buf.WriteString(index) // validated: no character JSON escapes
	buf.WriteString(`","_id":`)
	appendJSONString(buf, d.ID)
	buf.WriteString("}}\n")
	buf.Write(d.Prefix)
	buf.Write(d.Body)
	buf.WriteByte('\n')
}

// appendJSONString appends s as a JSON string; ids are usually hex, so the
// common case copies.
func appendJSONString(buf *bytes.Buffer, s string) {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			b, _ := json.Marshal(s) // never fails for a string
			buf.Write(b)
			return
		}
	}
	buf.WriteByte('"')
	buf.WriteString(s)
	buf.WriteByte('"')
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

// bulkFilter keeps only what the sink reads of a _bulk response.
var bulkFilter = []string{"errors", "items.*.status", "items.*.error", "items.*._id", "items.*._index"}

// send performs one _bulk request for docs[from:to] and sets their errors. A
// body Elasticsearch finds too large (413) is split in halves; a single
// document too large is refused for good.
func (s *ESSink) send(parent context.Context, body []byte, docs []Doc, from, to int, errs []error) {
	failAll := func(reason string, err error) {
		s.failures.WithLabelValues(reason).Inc()
		if parent.Err() == nil { // not shutting down
			s.log.Warn("bulk request failed; its documents will be retried", "documents", to-from, "err", err)
		}
		outcome := outcomeRetry
		var ops *OpsError
		if errors.As(err, &ops) {
			outcome = outcomeBlocked
			s.ops.WithLabelValues(ops.Reason).Inc()
		}
		for i := from; i < to; i++ {
			errs[i] = err
			s.docs.WithLabelValues(docs[i].Dataset, outcome).Inc()
		}
	}

	ctx, cancel := context.WithTimeout(parent, s.timeout)
	defer cancel()
	start := time.Now()
	res, err := esapi.BulkRequest{
		Body:       bytes.NewReader(body),
		Header:     http.Header{"Content-Type": {"application/x-ndjson"}},
		FilterPath: bulkFilter,
	}.Do(ctx, s.client)
	if err != nil {
		s.duration.Observe(time.Since(start).Seconds())
		failAll("transport", fmt.Errorf("elasticsearch bulk request: %w", err))
		return
	}
	defer res.Body.Close()
	if res.StatusCode == http.StatusRequestEntityTooLarge {
		s.duration.Observe(time.Since(start).Seconds())
		_, _ = io.Copy(io.Discard, res.Body)
		if to-from == 1 {
			errs[from] = bus.Permanent(fmt.Errorf("elasticsearch refused document %s: %d bytes are more than http.max_content_length",
				event.Truncate(docs[from].ID, 64), docs[from].Len()))
			s.docs.WithLabelValues(docs[from].Dataset, outcomeRejected).Inc()
			return
		}
		s.failures.WithLabelValues("http_413").Inc()
		mid := from + (to-from)/2
		for _, r := range [][2]int{{from, mid}, {mid, to}} {
			var half bytes.Buffer
			for _, d := range docs[r[0]:r[1]] {
				appendDoc(&half, DataStreamType+"-"+d.Dataset+"-"+s.ns, d)
			}
			s.send(parent, half.Bytes(), docs, r[0], r[1], errs)
		}
		return
	}
	if res.IsError() {
		s.duration.Observe(time.Since(start).Seconds())
		var e struct {
			Error esError `json:"error"`
		}
		_ = json.NewDecoder(io.LimitReader(res.Body, 64<<10)).Decode(&e)
		err := fmt.Errorf("elasticsearch bulk request: %s: %s", res.Status(), e.Error.String())
		if reason := opsReason(res.StatusCode, e.Error.Type); reason != "" {
			err = &OpsError{Reason: reason, Err: err}
		}
		failAll("http_"+strconv.Itoa(res.StatusCode), err)
		return
	}
	rb := s.bufs.Get().(*bytes.Buffer)
	defer s.bufs.Put(rb)
	rb.Reset()
	_, err = rb.ReadFrom(res.Body)
	s.duration.Observe(time.Since(start).Seconds())
	if err != nil {
		failAll("transport", fmt.Errorf("elasticsearch bulk response: %w", err))
		return
	}
	// Mostly every item is created: count them, decode nothing.
	if failed, n, err := scanBulkSummary(rb.Bytes()); err == nil && !failed && n == to-from {
		for i := from; i < to; i++ {
			errs[i] = nil
			s.docs.WithLabelValues(docs[i].Dataset, outcomeCreated).Inc()
		}
		return
	}
	var br bulkResponse
	if err := json.Unmarshal(rb.Bytes(), &br); err != nil {
		failAll("response", fmt.Errorf("elasticsearch bulk response: %w", err))
		return
	}
	if len(br.Items) != to-from {
		failAll("response", fmt.Errorf("elasticsearch bulk response has %d items for %d documents", len(br.Items), to-from))
		return
	}
	for k := range br.Items {
		var it bulkItem
		for _, v := range br.Items[k] { // one key: the op
			it = v
		}
		outcome, err := itemOutcome(it)
		errs[from+k] = err
		s.docs.WithLabelValues(docs[from+k].Dataset, outcome).Inc()
		var ops *OpsError
		if errors.As(err, &ops) {
			s.ops.WithLabelValues(ops.Reason).Inc()
		}
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
	errType := ""
	if it.Error != nil {
		errType = it.Error.Type
	}
	if reason := opsReason(it.Status, errType); reason != "" {
		return outcomeBlocked, &OpsError{Reason: reason, Err: err}
	}
	if transientItem(it) {
		return outcomeRetry, err
	}
	return outcomeRejected, bus.Permanent(err)
}

// opsReason names an operations refusal, or returns "" for any other: a
// write block, missing privileges or credentials, a missing index. The
// document is not at fault, so it must wait for the operator, not be
// dead-lettered.
func opsReason(status int, errType string) string {
	switch {
	case errType == "cluster_block_exception":
		return "cluster_block"
	case errType == "index_not_found_exception" || errType == "index_closed_exception":
		return "not_found"
	case errType == "security_exception" && status == http.StatusUnauthorized:
		return "unauthorized"
	case errType == "security_exception":
		return "forbidden"
	case status == http.StatusUnauthorized:
		return "unauthorized"
	case status == http.StatusForbidden:
		return "forbidden"
	case status == http.StatusNotFound:
		return "not_found"
	}
	return ""
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
