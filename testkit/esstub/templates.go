package esstub

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
)

// installStackTemplates installs what a fresh Elasticsearch 8 node has for
// logs-*-*, so a template that means to win must outrank priority 100.
func (s *Server) installStackTemplates() {
	put := func(name, body string) {
		s.components[name] = Template{Seq: s.nextSeq(), Name: name, Body: json.RawMessage(body)}
	}
	put("logs@mappings", `{"template":{"mappings":{"date_detection":false,"properties":{"@timestamp":{"type":"date"},`+
		`"data_stream":{"properties":{"type":{"type":"constant_keyword","value":"logs"},"dataset":{"type":"constant_keyword"},"namespace":{"type":"constant_keyword"}}}}}},`+
		`"_meta":{"managed":true,"description":"default mappings for the logs index template installed by x-pack"},"version":1}`)
	put("logs@settings", `{"template":{"settings":{"index":{"lifecycle":{"name":"logs"},"mapping":{"ignore_malformed":true}}}},"_meta":{"managed":true},"version":1}`)
	body := `{"index_patterns":["logs-*-*"],"priority":100,"data_stream":{"hidden":false,"allow_custom_routing":false},` +
		`"composed_of":["logs@mappings","logs@settings","logs@custom"],"ignore_missing_component_templates":["logs@custom"],` +
		`"allow_auto_create":true,"_meta":{"managed":true,"description":"default logs template installed by x-pack"},"version":1}`
	s.indexTmpls["logs"] = indexTemplate{
		Template:   Template{Seq: s.nextSeq(), Name: "logs", Body: json.RawMessage(body)},
		patterns:   []string{"logs-*-*"},
		priority:   100,
		dataStream: true,
	}
}

func (s *Server) componentTemplate(w http.ResponseWriter, r *http.Request, name string) {
	switch r.Method {
	case http.MethodGet:
		s.mu.Lock()
		t, ok := s.components[name]
		s.mu.Unlock()
		if !ok {
			writeError(w, http.StatusNotFound, "resource_not_found_exception", "component template matching ["+name+"] not found")
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"component_templates": []any{
			map[string]any{"name": name, "component_template": t.Body},
		}})
		return
	case http.MethodPut, http.MethodPost:
	default:
		methodNotAllowed(w, r, "GET, PUT, POST")
		return
	}
	body, m, ok := s.templateBody(w, r, "component_template")
	if !ok {
		return
	}
	if err := checkKeys(m, "component_template", []string{"template"}, "template", "version", "_meta", "deprecated"); err != nil {
		writeError(w, http.StatusBadRequest, "x_content_parse_exception", err.Error())
		return
	}
	if err := checkTemplateSection(m["template"]); err != nil {
		writeError(w, http.StatusBadRequest, "mapper_parsing_exception", err.Error())
		return
	}
	s.mu.Lock()
	s.components[name] = Template{Seq: s.nextSeq(), Name: name, Body: body}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"acknowledged": true})
}

func (s *Server) indexTemplate(w http.ResponseWriter, r *http.Request, name string) {
	switch r.Method {
	case http.MethodGet:
		s.mu.Lock()
		t, ok := s.indexTmpls[name]
		s.mu.Unlock()
		if !ok {
			writeError(w, http.StatusNotFound, "resource_not_found_exception", "index template matching ["+name+"] not found")
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"index_templates": []any{
			map[string]any{"name": name, "index_template": t.Body},
		}})
		return
	case http.MethodPut, http.MethodPost:
	default:
		methodNotAllowed(w, r, "GET, PUT, POST")
		return
	}
	body, m, ok := s.templateBody(w, r, "index_template")
	if !ok {
		return
	}
	bad := func(errType, format string, args ...any) {
		writeError(w, http.StatusBadRequest, errType, fmt.Sprintf(format, args...))
	}
	if err := checkKeys(m, "index_template", []string{"index_patterns"}, "index_patterns", "composed_of", "template",
		"data_stream", "priority", "version", "_meta", "allow_auto_create", "ignore_missing_component_templates", "deprecated"); err != nil {
		bad("x_content_parse_exception", "%v", err)
		return
	}
	t := indexTemplate{Template: Template{Name: name, Body: body}}
	if err := unmarshalStrings(m["index_patterns"], &t.patterns); err != nil || len(t.patterns) == 0 {
		bad("x_content_parse_exception", "[index_template] failed to parse field [index_patterns]: want a non-empty string or array of strings")
		return
	}
	var composedOf, ignoreMissing []string
	if err := unmarshalStrings(m["composed_of"], &composedOf); err != nil {
		bad("x_content_parse_exception", "[index_template] failed to parse field [composed_of]: %v", err)
		return
	}
	if err := unmarshalStrings(m["ignore_missing_component_templates"], &ignoreMissing); err != nil {
		bad("x_content_parse_exception", "[index_template] failed to parse field [ignore_missing_component_templates]: %v", err)
		return
	}
	if p, ok := m["priority"]; ok {
		if err := json.Unmarshal(p, &t.priority); err != nil || t.priority < 0 {
			bad("x_content_parse_exception", "[index_template] failed to parse field [priority]: want a non-negative integer")
			return
		}
	}
	if ds, ok := m["data_stream"]; ok {
		var dsm map[string]json.RawMessage
		if err := json.Unmarshal(ds, &dsm); err != nil || dsm == nil {
			bad("x_content_parse_exception", "[index_template] failed to parse field [data_stream]: want an object")
			return
		}
		t.dataStream = true
	}
	if tmpl, ok := m["template"]; ok {
		if err := checkTemplateSection(tmpl); err != nil {
			bad("mapper_parsing_exception", "%v", err)
			return
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	var missing []string
	for _, c := range composedOf {
		if _, ok := s.components[c]; !ok && !slices.Contains(ignoreMissing, c) {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		bad("illegal_argument_exception", "index template [%s] specifies component templates %v that do not exist", name, missing)
		return
	}
	for _, other := range s.sortedIndexTemplates() {
		if other.Name == name || other.priority != t.priority || !overlaps(t.patterns, other.patterns) {
			continue
		}
		bad("illegal_argument_exception", "index template [%s] has index patterns %v matching patterns from existing templates [%s] "+
			"with patterns (%s => %v) that have the same priority [%d], multiple index templates may not match during index "+
			"creation, please use a different priority", name, t.patterns, other.Name, other.Name, other.patterns, t.priority)
		return
	}
	t.Seq = s.nextSeq()
	s.indexTmpls[name] = t
	writeJSON(w, http.StatusOK, map[string]any{"acknowledged": true})
}

// templateBody reads and decodes a template request body.
func (s *Server) templateBody(w http.ResponseWriter, r *http.Request, what string) (json.RawMessage, map[string]json.RawMessage, bool) {
	if _, ok := checkContentType(w, r, "application/json", "application/vnd.elasticsearch+json"); !ok {
		return nil, nil, false
	}
	body, ok := s.readBody(w, r)
	if !ok {
		return nil, nil, false
	}
	if len(body) == 0 {
		writeError(w, http.StatusBadRequest, "parse_exception", "request body is required")
		return nil, nil, false
	}
	m, err := decodeObject(body)
	if err != nil {
		writeError(w, http.StatusBadRequest, "x_content_parse_exception", "["+what+"] failed to parse: "+err.Error())
		return nil, nil, false
	}
	return json.RawMessage(body), m, true
}

// sortedIndexTemplates lists index templates by descending priority, then name.
func (s *Server) sortedIndexTemplates() []indexTemplate {
	ts := make([]indexTemplate, 0, len(s.indexTmpls))
	for _, t := range s.indexTmpls {
		ts = append(ts, t)
	}
	sort.Slice(ts, func(i, j int) bool {
		if ts[i].priority != ts[j].priority {
			return ts[i].priority > ts[j].priority
		}
		return ts[i].Name < ts[j].Name
	})
	return ts
}

// matchTemplate is the index template Elasticsearch would apply to a new
// index or data stream called name: the matching one of highest priority.
func (s *Server) matchTemplate(name string) (indexTemplate, bool) {
	for _, t := range s.sortedIndexTemplates() {
		for _, p := range t.patterns {
			if globMatch(p, name) {
				return t, true
			}
		}
	}
	return indexTemplate{}, false
}

// overlaps approximates Elasticsearch's automaton intersection of two pattern
// lists: they overlap when one pattern matches the other read literally.
func overlaps(a, b []string) bool {
	for _, p := range a {
		for _, q := range b {
			if globMatch(p, q) || globMatch(q, p) {
				return true
			}
		}
	}
	return false
}

func checkKeys(m map[string]json.RawMessage, what string, required []string, allowed ...string) error {
	for k := range m {
		if !slices.Contains(allowed, k) {
			return fmt.Errorf("[%s] unknown field [%s]", what, k)
		}
	}
	for _, k := range required {
		if _, ok := m[k]; !ok {
			return fmt.Errorf("[%s] required field [%s] is missing", what, k)
		}
	}
	return nil
}

// unmarshalStrings decodes a string or an array of strings; absent is empty.
func unmarshalStrings(raw json.RawMessage, out *[]string) error {
	if raw == nil {
		return nil
	}
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		*out = []string{one}
		return nil
	}
	return json.Unmarshal(raw, out)
}

// checkTemplateSection validates the "template" object of a template.
func checkTemplateSection(raw json.RawMessage) error {
	var t map[string]json.RawMessage
	if err := json.Unmarshal(raw, &t); err != nil || t == nil {
		return fmt.Errorf("[template] must be an object")
	}
	if err := checkKeys(t, "template", nil, "settings", "mappings", "aliases", "lifecycle", "data_stream_options"); err != nil {
		return err
	}
	if mp, ok := t["mappings"]; ok {
		return checkMappings(mp)
	}
	return nil
}

// checkMappings validates a mappings object the way Elasticsearch's mapper
// parsers would reject it: unknown root parameters, unknown field types, and
// parameters a field type does not take.
func checkMappings(raw json.RawMessage) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return fmt.Errorf("[mappings] must be an object")
	}
	for k := range m {
		if !slices.Contains([]string{"properties", "dynamic", "date_detection", "numeric_detection", "dynamic_templates",
			"dynamic_date_formats", "_source", "_meta", "_routing", "runtime", "subobjects", "enabled"}, k) {
			return fmt.Errorf("Root mapping definition has unsupported parameters:  [%s : %s]", k, m[k])
		}
	}
	if p, ok := m["properties"]; ok {
		return checkProperties("", p)
	}
	return nil
}

// fieldParams lists the parameters each checked field type takes. Types not
// listed are accepted with any parameters.
var fieldParams = func() map[string][]string {
	common := []string{"type", "meta", "copy_to", "fields", "index", "doc_values", "store", "null_value", "script", "on_script_error"}
	with := func(extra ...string) []string { return append(slices.Clone(common), extra...) }
	numeric := with("coerce", "ignore_malformed", "time_series_metric", "time_series_dimension")
	return map[string][]string{
		"keyword":          with("ignore_above", "normalizer", "eager_global_ordinals", "norms", "similarity", "split_queries_on_whitespace", "time_series_dimension", "index_options"),
		"wildcard":         {"type", "meta", "copy_to", "fields", "ignore_above", "null_value"},
		"match_only_text":  {"type", "meta", "copy_to", "fields"},
		"text":             with("analyzer", "search_analyzer", "search_quote_analyzer", "norms", "fielddata", "index_options", "index_phrases", "index_prefixes", "position_increment_gap", "similarity", "term_vector", "eager_global_ordinals"),
		"long":             numeric,
		"integer":          numeric,
		"short":            numeric,
		"byte":             numeric,
		"double":           numeric,
		"float":            numeric,
		"half_float":       numeric,
		"unsigned_long":    numeric,
		"scaled_float":     append(slices.Clone(numeric), "scaling_factor"),
		"date":             with("format", "locale", "ignore_malformed"),
		"date_nanos":       with("format", "locale", "ignore_malformed"),
		"boolean":          common,
		"ip":               with("ignore_malformed", "time_series_dimension"),
		"flattened":        {"type", "meta", "depth_limit", "doc_values", "eager_global_ordinals", "ignore_above", "index", "index_options", "null_value", "similarity", "split_queries_on_whitespace", "time_series_dimensions"},
		"constant_keyword": {"type", "meta", "value"},
		"object":           {"type", "properties", "dynamic", "enabled", "subobjects"},
		"nested":           {"type", "properties", "dynamic", "enabled", "include_in_parent", "include_in_root"},
		"alias":            {"type", "path"},
		"geo_point":        with("ignore_malformed", "ignore_z_value"),
		"binary":           {"type", "meta", "doc_values", "store"},
	}
}()

func checkProperties(prefix string, raw json.RawMessage) error {
	var props map[string]json.RawMessage
	if err := json.Unmarshal(raw, &props); err != nil || props == nil {
		return fmt.Errorf("[properties] of [%s] must be an object", strings.TrimSuffix(prefix, "."))
	}
	for name, def := range props {
		if err := checkField(prefix+name, def, false); err != nil {
			return err
		}
	}
	return nil
}

func checkField(path string, raw json.RawMessage, multi bool) error {
	var f map[string]json.RawMessage
	if err := json.Unmarshal(raw, &f); err != nil || f == nil {
		return fmt.Errorf("Expected map for property [fields] on field [%s]", path)
	}
	typ := "object"
	if t, ok := f["type"]; ok {
		if err := json.Unmarshal(t, &typ); err != nil {
			return fmt.Errorf("type of field [%s] must be a string", path)
		}
	} else if multi {
		return fmt.Errorf("No type specified for field [%s]", path)
	}
	params, known := fieldParams[typ]
	if !known {
		return fmt.Errorf("No handler for type [%s] declared on field [%s]", typ, path)
	}
	for k := range f {
		if !slices.Contains(params, k) {
			return fmt.Errorf("unknown parameter [%s] on mapper [%s] of type [%s]", k, path, typ)
		}
	}
	if p, ok := f["properties"]; ok {
		if err := checkProperties(path+".", p); err != nil {
			return err
		}
	}
	if fs, ok := f["fields"]; ok {
		var sub map[string]json.RawMessage
		if err := json.Unmarshal(fs, &sub); err != nil || sub == nil {
			return fmt.Errorf("[fields] of [%s] must be an object", path)
		}
		for name, def := range sub {
			if err := checkField(path+"."+name, def, true); err != nil {
				return err
			}
		}
	}
	return nil
}

// ilmActions lists the actions each ILM phase takes.
var ilmActions = map[string][]string{
	"hot":    {"rollover", "set_priority", "unfollow", "readonly", "shrink", "forcemerge", "searchable_snapshot", "downsample"},
	"warm":   {"set_priority", "unfollow", "readonly", "allocate", "migrate", "shrink", "forcemerge", "downsample"},
	"cold":   {"set_priority", "unfollow", "readonly", "allocate", "migrate", "searchable_snapshot", "downsample"},
	"frozen": {"unfollow", "searchable_snapshot"},
	"delete": {"wait_for_snapshot", "delete"},
}

// ilmPolicy serves PUT and GET /_ilm/policy/{name}; Policies returns the
// request bodies.
func (s *Server) ilmPolicy(w http.ResponseWriter, r *http.Request, name string) {
	switch r.Method {
	case http.MethodGet:
		s.mu.Lock()
		p, ok := s.policies[name]
		s.mu.Unlock()
		if !ok {
			writeError(w, http.StatusNotFound, "resource_not_found_exception", "Lifecycle policy not found: "+name)
			return
		}
		var req struct {
			Policy json.RawMessage `json:"policy"`
		}
		_ = json.Unmarshal(p.Body, &req)
		writeJSON(w, http.StatusOK, map[string]any{name: map[string]any{"version": 1, "policy": req.Policy}})
		return
	case http.MethodPut:
	default:
		methodNotAllowed(w, r, "GET, PUT")
		return
	}
	body, m, ok := s.templateBody(w, r, "put_lifecycle_request")
	if !ok {
		return
	}
	bad := func(format string, args ...any) {
		writeError(w, http.StatusBadRequest, "x_content_parse_exception", fmt.Sprintf(format, args...))
	}
	if err := checkKeys(m, "put_lifecycle_request", []string{"policy"}, "policy"); err != nil {
		bad("%v", err)
		return
	}
	var policy map[string]json.RawMessage
	if err := json.Unmarshal(m["policy"], &policy); err != nil || policy == nil {
		bad("[put_lifecycle_request] failed to parse field [policy]")
		return
	}
	if err := checkKeys(policy, "lifecycle_policy", []string{"phases"}, "phases", "_meta", "deprecated"); err != nil {
		bad("%v", err)
		return
	}
	var phases map[string]map[string]json.RawMessage
	if err := json.Unmarshal(policy["phases"], &phases); err != nil {
		bad("[lifecycle_policy] failed to parse field [phases]")
		return
	}
	for phase, def := range phases {
		allowed, ok := ilmActions[phase]
		if !ok {
			writeError(w, http.StatusBadRequest, "illegal_argument_exception", "Timeseries lifecycle does not support phase ["+phase+"]")
			return
		}
		if err := checkKeys(def, "phase", []string{"actions"}, "actions", "min_age"); err != nil {
			bad("%v", err)
			return
		}
		var actions map[string]json.RawMessage
		if err := json.Unmarshal(def["actions"], &actions); err != nil {
			bad("[phase] failed to parse field [actions]")
			return
		}
		for a := range actions {
			if !slices.Contains(allowed, a) {
				writeError(w, http.StatusBadRequest, "illegal_argument_exception", "invalid action ["+a+"] defined in phase ["+phase+"]")
				return
			}
		}
		if phase == "hot" {
			if _, ok := actions["rollover"]; ok {
				var ro map[string]json.RawMessage
				if err := json.Unmarshal(actions["rollover"], &ro); err != nil || len(ro) == 0 {
					writeError(w, http.StatusBadRequest, "action_request_validation_exception", "Validation Failed: 1: at least one max_* rollover condition must be set;")
					return
				}
			}
		}
	}
	s.mu.Lock()
	s.policies[name] = Template{Seq: s.nextSeq(), Name: name, Body: body}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"acknowledged": true})
}

// lifecycleOf resolves index.lifecycle.name of t: its own template section
// overrides its component templates, later ones override earlier ones.
// Called with s.mu held.
func (s *Server) lifecycleOf(t indexTemplate) string {
	var body struct {
		ComposedOf []string        `json:"composed_of"`
		Template   json.RawMessage `json:"template"`
	}
	_ = json.Unmarshal(t.Body, &body)
	name := ""
	from := func(section json.RawMessage) {
		var sec struct {
			Settings map[string]any `json:"settings"`
		}
		if json.Unmarshal(section, &sec) != nil {
			return
		}
		if v, ok := sec.Settings["index.lifecycle.name"].(string); ok {
			name = v
		}
		if idx, ok := sec.Settings["index"].(map[string]any); ok {
			if v, ok := idx["lifecycle.name"].(string); ok {
				name = v
			}
			if lc, ok := idx["lifecycle"].(map[string]any); ok {
				if v, ok := lc["name"].(string); ok {
					name = v
				}
			}
		}
	}
	for _, c := range body.ComposedOf {
		if ct, ok := s.components[c]; ok {
			var cb struct {
				Template json.RawMessage `json:"template"`
			}
			if json.Unmarshal(ct.Body, &cb) == nil {
				from(cb.Template)
			}
		}
	}
	from(body.Template)
	return name
}
