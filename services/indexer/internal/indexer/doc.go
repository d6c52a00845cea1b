package indexer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// Doc is one document ready for a bulk request. Its stored JSON is Prefix
// followed by Body: a document that arrives as complete ECS JSON is stored
// as it arrived, with the data_stream object spliced in front of its first
// key when the publisher did not set it (Prefix), never decoded into an
// event.Event and encoded again.
type Doc struct {
	ID      string // _id: event.id, so a redelivery is stored once
	Dataset string // data_stream.dataset, e.g. whalewatch.process
	Prefix  []byte // `{"data_stream":{...},` or nil
	Body    []byte // the JSON, one line; without its '{' when Prefix is set
}

// Len is the size of the stored JSON.
func (d Doc) Len() int { return len(d.Prefix) + len(d.Body) }

// probe is the part of a document the indexer reads to route and validate
// it; scanDoc checks the syntax of the whole document and fills these.
type probe struct {
	Timestamp *string `json:"@timestamp"`
	Event     struct {
		ID      string `json:"id"`
		Kind    string `json:"kind"`
		Dataset string `json:"dataset"`
	} `json:"event"`
	Host struct {
		Name string `json:"name"`
	} `json:"host"`
	Rule *struct {
		ID string `json:"id"`
	} `json:"rule"`
	ECS        json.RawMessage `json:"ecs"`
	DataStream json.RawMessage `json:"data_stream"`
	Whalewatch struct {
		SchemaVersion string `json:"schema_version"`
		Telemetry     string `json:"telemetry"`
		Severity      string `json:"severity"`
		Response      *struct {
			Status string `json:"status"`
		} `json:"response"`
	} `json:"whalewatch"`
}

// preparer turns NATS payloads into Docs.
type preparer struct {
	ns      string
	version string // agent.version of documents the indexer completes
	// prefixes holds the data_stream splice of each dataset.
	prefixes map[string][]byte
	// fast and slow count documents stored as they arrived and documents
	// decoded, completed and encoded (a publisher without event.Complete).
	fast, slow prometheus.Counter
}

// newDocumentsCounter registers whalewatch_indexer_prepared_total{path}.
func newDocumentsCounter(reg prometheus.Registerer) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "whalewatch_indexer_prepared_total",
		Help: "Documents prepared for Elasticsearch, by path: fast (complete ECS from the publisher, stored as it arrived) or slow (decoded, completed and encoded by the indexer).",
	}, []string{"path"})
	reg.MustRegister(c)
	return c
}

func newPreparer(ns, version string, docs *prometheus.CounterVec) *preparer {
	p := &preparer{ns: ns, version: version, prefixes: map[string][]byte{},
		fast: docs.WithLabelValues("fast"), slow: docs.WithLabelValues("slow")}
	datasets := []string{event.DatasetThreat, event.DatasetResponse}
	for _, t := range event.Telemetries {
		datasets = append(datasets, t.Dataset())
	}
	for _, ds := range datasets {
		b, _ := json.Marshal(event.DataStream{Type: DataStreamType, Dataset: ds, Namespace: ns})
		p.prefixes[ds] = append(append([]byte(`{"data_stream":`), b...), ',')
	}
	return p
}

// prepare validates data as much as routing and Elasticsearch need, and
// returns its Doc. An error is event.ErrInvalid: the message is
// dead-lettered, it can never be indexed.
//
// A document with ecs.version is complete ECS (its publisher called
// event.Complete) and is stored as it arrived. One without is an older
// publisher's: it is decoded, completed and encoded (the slow path).
func (p *preparer) prepare(data []byte) (Doc, error) {
	if len(data) > event.MaxDocument {
		return Doc{}, fmt.Errorf("%w: %d bytes, limit %d", event.ErrInvalid, len(data), event.MaxDocument)
	}
	data = bytes.TrimSpace(data)
	var pr probe
	newline, err := scanDoc(data, &pr)
	if err != nil {
		return Doc{}, fmt.Errorf("%w: %v", event.ErrInvalid, err)
	}
	ds, err := pr.validate()
	if err != nil {
		return Doc{}, err
	}
	if len(pr.ECS) == 0 || string(pr.ECS) == "null" {
		d, err := p.complete(data, ds)
		if err == nil {
			p.slow.Inc()
		}
		return d, err
	}
	if newline { // valid JSON may span lines; NDJSON may not
		var c bytes.Buffer
		if err := json.Compact(&c, data); err != nil {
			return Doc{}, fmt.Errorf("%w: %v", event.ErrInvalid, err)
		}
		data = c.Bytes()
	}
	d := Doc{ID: pr.Event.ID, Dataset: ds, Body: data}
	if len(pr.DataStream) == 0 {
		// Elasticsearch checks a data_stream the publisher set against the
		// target's constant_keyword mapping: a mismatch is a mapping error.
		d.Prefix, d.Body = p.prefixes[ds], data[1:]
		if rest := bytes.TrimLeft(d.Body, " \t\r"); len(rest) > 0 && rest[0] == '}' { // "{}" has no key to precede
			d.Prefix = d.Prefix[:len(d.Prefix)-1]
		}
	}
	p.fast.Inc()
	return d, nil
}

// validate checks what event.Validate checks of the fields the indexer and
// Kibana rely on, and returns the dataset.
func (pr *probe) validate() (string, error) {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	if v := pr.Whalewatch.SchemaVersion; v != event.SchemaMajor && !strings.HasPrefix(v, event.SchemaMajor+".") {
		bad("whalewatch.schema_version %q: this build reads %s.x", event.Truncate(v, 32), event.SchemaMajor)
	}
	// _id is event.id: one that is not UTF-8 would be stored as U+FFFD,
	// so that two such ids would be one document (the second a duplicate).
	if pr.Event.ID == "" || len(pr.Event.ID) > event.MaxName || !utf8.ValidString(pr.Event.ID) {
		bad("event.id missing, longer than %d or not UTF-8", event.MaxName)
	}
	if pr.Timestamp == nil {
		bad("@timestamp missing")
	} else if _, err := time.Parse(time.RFC3339Nano, *pr.Timestamp); err != nil {
		bad("@timestamp %q is not RFC 3339", event.Truncate(*pr.Timestamp, 40))
	}
	if pr.Host.Name == "" {
		bad("host.name missing")
	}
	ds := ""
	switch event.Kind(pr.Event.Kind) {
	case event.KindAlert:
		if pr.Rule == nil || pr.Rule.ID == "" {
			bad("alert without rule.id")
		}
		if !event.Severity(pr.Whalewatch.Severity).Valid() {
			bad("alert severity %q unknown", event.Truncate(pr.Whalewatch.Severity, 32))
		}
		ds = event.DatasetThreat
	case event.KindEvent:
		switch t := event.Telemetry(pr.Whalewatch.Telemetry); {
		case t.Valid():
			ds = t.Dataset()
		case t != "":
			bad("whalewatch.telemetry %q unknown", event.Truncate(string(t), 32))
		case pr.Event.Dataset == event.DatasetResponse:
			ds = event.DatasetResponse
		default:
			bad("no data stream for an event without a known whalewatch.telemetry nor event.dataset %s", event.DatasetResponse)
		}
	default:
		bad("event.kind %q: want event or alert", event.Truncate(pr.Event.Kind, 32))
	}
	if len(problems) > 0 {
		return "", fmt.Errorf("%w: %s", event.ErrInvalid, strings.Join(problems, "; "))
	}
	return ds, nil
}

// complete is the slow path: decode, fill the ECS fields the publisher did
// not (agent inferred from the kind of document), encode.
func (p *preparer) complete(data []byte, ds string) (Doc, error) {
	e, err := event.Decode(data)
	if err != nil {
		return Doc{}, err
	}
	agent := &event.Agent{Type: "whalewatch-collector", Name: e.Host.Name, Version: p.version}
	if ds == event.DatasetThreat || (ds == event.DatasetResponse && (e.Whalewatch.Response == nil || e.Whalewatch.Response.Status == "")) {
		agent = &event.Agent{Type: "whalewatch-detector", Version: p.version} // threats and requests: host unknown
	}
	e.Complete(agent)
	if e.DataStream == nil {
		e.DataStream = &event.DataStream{Type: DataStreamType, Dataset: ds, Namespace: p.ns}
	}
	b, err := event.Marshal(e)
	if err != nil {
		return Doc{}, fmt.Errorf("%w: %v", event.ErrInvalid, err)
	}
	return Doc{ID: e.Event.ID, Dataset: ds, Body: b}, nil
}
