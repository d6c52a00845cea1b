package esstub

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
)

// bulkParams are the query parameters Elasticsearch's _bulk takes; any other
// is a 400, as there.
var bulkParams = []string{"pipeline", "refresh", "routing", "timeout", "wait_for_active_shards", "require_alias",
	"require_data_stream", "list_executed_pipelines", "include_source_on_error", "_source", "_source_includes",
	"_source_excludes", "pretty", "human", "error_trace", "filter_path"}

// actionParams are the keys an action line's metadata may hold.
var actionParams = []string{"_index", "_id", "routing", "pipeline", "require_alias", "require_data_stream",
	"dynamic_templates", "if_seq_no", "if_primary_term", "version", "version_type", "list_executed_pipelines"}

// bulkOp is one parsed action and its source.
type bulkOp struct {
	op     string
	index  string
	id     string
	source []byte
}

func (s *Server) bulk(w http.ResponseWriter, r *http.Request, defaultIndex string) {
	start := time.Now()
	if r.Method != http.MethodPost && r.Method != http.MethodPut {
		methodNotAllowed(w, r, "POST, PUT")
		return
	}
	rec := BulkRequest{Path: r.URL.Path, Query: r.URL.RawQuery, ContentType: r.Header.Get("Content-Type")}
	record := func(status int) {
		s.mu.Lock()
		rec.Seq = s.nextSeq()
		rec.Status = status
		s.bulks = append(s.bulks, rec)
		s.mu.Unlock()
	}
	fail := func(status int, errType, format string, args ...any) {
		record(status)
		writeError(w, status, errType, fmt.Sprintf(format, args...))
	}
	if _, ok := checkContentType(w, r, "application/x-ndjson", "application/vnd.elasticsearch+x-ndjson",
		"application/json", "application/vnd.elasticsearch+json"); !ok {
		record(http.StatusNotAcceptable)
		return
	}
	for k := range r.URL.Query() {
		if !slices.Contains(bulkParams, k) {
			fail(http.StatusBadRequest, "illegal_argument_exception", "request [%s] contains unrecognized parameter: [%s]", r.URL.Path, k)
			return
		}
	}
	body, ok := s.readBody(w, r)
	if !ok {
		record(http.StatusRequestEntityTooLarge)
		return
	}
	if len(body) == 0 {
		fail(http.StatusBadRequest, "parse_exception", "request body is required")
		return
	}
	if body[len(body)-1] != '\n' {
		fail(http.StatusBadRequest, "illegal_argument_exception", "The bulk request must be terminated by a newline [\\n]")
		return
	}
	ops, err := parseBulk(body, defaultIndex)
	if err != nil {
		fail(http.StatusBadRequest, err.errType, "%s", err.reason)
		return
	}
	rec.Items = len(ops)

	s.mu.Lock()
	items := make([]any, len(ops))
	errors := false
	for i, op := range ops {
		status, item := s.apply(op)
		if status >= 300 {
			errors = true
		}
		items[i] = map[string]any{op.op: item}
	}
	rec.Errors = errors
	rec.Seq = s.nextSeq()
	rec.Status = http.StatusOK
	s.bulks = append(s.bulks, rec)
	lose := s.loseResponses > 0
	if lose {
		s.loseResponses--
	}
	s.mu.Unlock()
	if lose { // stored, but the client never hears of it
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				_ = conn.Close()
				return
			}
		}
		panic(http.ErrAbortHandler)
	}

	writeJSON(w, http.StatusOK, map[string]any{
		"took":   time.Since(start).Milliseconds(),
		"errors": errors,
		"items":  items,
	})
}

type requestError struct{ errType, reason string }

// parseBulk splits an NDJSON body into operations, strictly: an action line
// holding one object with one known op, then (but for delete) a source line.
func parseBulk(body []byte, defaultIndex string) ([]bulkOp, *requestError) {
	lines := bytes.Split(body[:len(body)-1], []byte{'\n'})
	var ops []bulkOp
	var missing []string
	for i := 0; i < len(lines); i++ {
		lineNo := i + 1
		action, err := decodeObject(lines[i])
		if err != nil {
			return nil, &requestError{"x_content_parse_exception",
				fmt.Sprintf("Malformed action/metadata line [%d], expected START_OBJECT: %v", lineNo, err)}
		}
		if len(action) != 1 {
			return nil, &requestError{"illegal_argument_exception",
				fmt.Sprintf("Malformed action/metadata line [%d], expected a single action, found %d keys", lineNo, len(action))}
		}
		var op bulkOp
		var rawMeta json.RawMessage
		for k, v := range action {
			op.op, rawMeta = k, v
		}
		switch op.op {
		case "create", "index":
		case "update", "delete":
			return nil, &requestError{"illegal_argument_exception",
				fmt.Sprintf("esstub: action [%s] on line [%d] is not supported by the stub", op.op, lineNo)}
		default:
			return nil, &requestError{"illegal_argument_exception",
				fmt.Sprintf("Malformed action/metadata line [%d], expected field [create], [delete], [index] or [update] but found [%s]", lineNo, op.op)}
		}
		var meta map[string]json.RawMessage
		if err := json.Unmarshal(rawMeta, &meta); err != nil || meta == nil {
			return nil, &requestError{"illegal_argument_exception",
				fmt.Sprintf("Malformed action/metadata line [%d], expected START_OBJECT", lineNo)}
		}
		for k := range meta {
			if !slices.Contains(actionParams, k) {
				return nil, &requestError{"illegal_argument_exception",
					fmt.Sprintf("Action/metadata line [%d] contains an unknown parameter [%s]", lineNo, k)}
			}
		}
		op.index = defaultIndex
		if v, ok := meta["_index"]; ok {
			if err := json.Unmarshal(v, &op.index); err != nil {
				return nil, &requestError{"illegal_argument_exception", fmt.Sprintf("line [%d]: _index must be a string", lineNo)}
			}
		}
		if v, ok := meta["_id"]; ok {
			if err := json.Unmarshal(v, &op.id); err != nil {
				return nil, &requestError{"illegal_argument_exception", fmt.Sprintf("line [%d]: _id must be a string", lineNo)}
			}
		}
		if op.index == "" {
			missing = append(missing, fmt.Sprintf("%d: index is missing;", len(missing)+1))
		}
		i++
		if i >= len(lines) {
			return nil, &requestError{"action_request_validation_exception",
				fmt.Sprintf("Validation Failed: 1: source is missing for the action on line [%d];", lineNo)}
		}
		op.source = lines[i]
		ops = append(ops, op)
	}
	if len(missing) > 0 {
		return nil, &requestError{"action_request_validation_exception", "Validation Failed: " + strings.Join(missing, " ")}
	}
	if len(ops) == 0 {
		return nil, &requestError{"action_request_validation_exception", "Validation Failed: 1: no requests added;"}
	}
	return ops, nil
}

// apply performs one operation with s.mu held and returns its item result.
func (s *Server) apply(op bulkOp) (int, map[string]any) {
	item := map[string]any{"_index": op.index, "_id": op.id}
	fail := func(status int, errType, reason string) (int, map[string]any) {
		item["status"] = status
		item["error"] = map[string]any{"type": errType, "reason": reason, "index": op.index}
		return status, item
	}
	if s.itemError != nil {
		return fail(s.itemError.status, s.itemError.errType, injectedReason(s.itemError.errType, op.id))
	}
	if len(s.rejects) > 0 {
		rj := s.rejects[0]
		s.rejects = s.rejects[1:]
		return fail(rj.status, rj.errType, injectedReason(rj.errType, op.id))
	}
	if reason := invalidIndexName(op.index); reason != "" {
		return fail(http.StatusBadRequest, "invalid_index_name_exception", "Invalid index name ["+op.index+"], "+reason)
	}
	var src map[string]json.RawMessage
	if err := json.Unmarshal(op.source, &src); err != nil || src == nil {
		return fail(http.StatusBadRequest, "document_parsing_exception", "[1:1] failed to parse: the document is not a JSON object")
	}

	ds := s.streams[op.index]
	if ds == nil {
		if t, ok := s.matchTemplate(op.index); ok && t.dataStream {
			ds = &DataStream{Name: op.index, Template: t.Name, BackingIndex: backingIndex(op.index, time.Now()),
				Lifecycle: s.lifecycleOf(t)}
		}
	}
	if ds != nil {
		if op.op != "create" {
			return fail(http.StatusBadRequest, "illegal_argument_exception",
				"only write ops with an op_type of create are allowed in data streams")
		}
		if _, ok := src["@timestamp"]; !ok {
			return fail(http.StatusBadRequest, "document_parsing_exception",
				"[1:1] failed to parse: data stream timestamp field [@timestamp] is missing")
		}
		s.streams[op.index] = ds
		item["_index"] = ds.BackingIndex
	}

	t := s.targets[op.index]
	if t == nil {
		t = &target{ids: map[string]int{}}
		s.targets[op.index] = t
	}
	if op.id == "" {
		op.id = autoID()
		item["_id"] = op.id
	}
	version, exists := t.ids[op.id]
	if exists && op.op == "create" {
		return fail(http.StatusConflict, "version_conflict_engine_exception",
			fmt.Sprintf("[%s]: version conflict, document already exists (current version [%d])", op.id, version))
	}
	doc := Doc{Seq: s.nextSeq(), Index: op.index, ID: op.id, Op: op.op, Source: slices.Clone(op.source)}
	status, result := http.StatusCreated, "created"
	if exists {
		status, result = http.StatusOK, "updated"
		for i := range t.docs {
			if t.docs[i].ID == op.id {
				t.docs[i] = doc
			}
		}
	} else {
		t.docs = append(t.docs, doc)
	}
	t.ids[op.id] = version + 1
	s.docs = append(s.docs, doc)
	item["_version"] = version + 1
	item["result"] = result
	item["_shards"] = map[string]int{"total": 2, "successful": 1, "failed": 0}
	item["_seq_no"] = len(s.docs) - 1
	item["_primary_term"] = 1
	item["status"] = status
	return status, item
}

// invalidIndexName returns why Elasticsearch would refuse name, or "".
func invalidIndexName(name string) string {
	switch {
	case name != strings.ToLower(name):
		return "must be lowercase"
	case strings.HasPrefix(name, "_") || strings.HasPrefix(name, "-") || strings.HasPrefix(name, "+"):
		return "must not start with '_', '-', or '+'"
	case strings.ContainsAny(name, "\\/*?\"<>| ,#:"):
		return `must not contain the following characters [ , ", *, \, <, |, ,, >, /, ?, #, :]`
	case name == "." || name == "..":
		return "must not be '.' or '..'"
	case len(name) > 255:
		return "index name is too long"
	}
	return ""
}

func injectedReason(errType, id string) string {
	switch errType {
	case "mapper_parsing_exception", "document_parsing_exception":
		return "failed to parse field [process.pid] of type [long] in document with id '" + id + "'. Preview of field's value: 'esstub'"
	case "es_rejected_execution_exception":
		return "rejected execution of coordinating operation [coordinating_and_primary_bytes=0, replica_bytes=0, all_bytes=0, coordinating_operation_bytes=1, max_coordinating_and_primary_bytes=0]"
	case "version_conflict_engine_exception":
		return "[" + id + "]: version conflict, document already exists (current version [1])"
	}
	return "esstub: injected " + errType
}

// autoID is an id like the ones Elasticsearch generates: 20 URL-safe base64 characters.
func autoID() string {
	var b [15]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}
