package indexer

import (
	"context"
	"encoding/json"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/testkit/esstub"
)

// fill sets every field reachable from v to a non-zero value, so that the
// JSON of a filled Event has every field of the schema.
func fill(v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(v.Elem())
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			v.Set(reflect.ValueOf(time.Now()))
			return
		}
		for i := range v.NumField() {
			fill(v.Field(i))
		}
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 1, 1))
		fill(v.Index(0))
	case reflect.Map:
		v.Set(reflect.MakeMap(v.Type()))
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		fill(k)
		fill(e)
		v.SetMapIndex(k, e)
	case reflect.String:
		v.SetString("x")
	case reflect.Int, reflect.Int64:
		v.SetInt(1)
	case reflect.Uint64:
		v.SetUint(1)
	case reflect.Float64:
		v.SetFloat(1.5)
	case reflect.Bool:
		v.SetBool(true)
	default:
		panic("fill: unhandled kind " + v.Kind().String())
	}
}

// leaves lists the dotted paths of the leaf values of a JSON document.
func leaves(prefix string, v any, out map[string]bool) {
	switch x := v.(type) {
	case map[string]any:
		for k, c := range x {
			leaves(prefix+k+".", c, out)
		}
	case []any:
		for _, c := range x {
			leaves(prefix, c, out)
		}
	default:
		out[strings.TrimSuffix(prefix, ".")] = true
	}
}

// mappedFields lists field path -> mapping of the component template.
func mappedFields(t *testing.T) map[string]map[string]any {
	t.Helper()
	var tmpl struct {
		Template struct {
			Mappings struct {
				Properties map[string]any `json:"properties"`
			} `json:"mappings"`
		} `json:"template"`
	}
	require.NoError(t, json.Unmarshal(ComponentTemplateJSON, &tmpl))
	out := map[string]map[string]any{}
	var walk func(prefix string, props map[string]any)
	walk = func(prefix string, props map[string]any) {
		for name, def := range props {
			m := def.(map[string]any)
			if sub, ok := m["properties"].(map[string]any); ok {
				walk(prefix+name+".", sub)
				continue
			}
			out[prefix+name] = m
		}
	}
	walk("", tmpl.Template.Mappings.Properties)
	return out
}

// Every field of pkg/event is mapped, and every mapping is a field of pkg/event.
func TestComponentTemplateCoversTheSchema(t *testing.T) {
	t.Parallel()
	var e event.Event
	fill(reflect.ValueOf(&e).Elem())
	b, err := json.Marshal(&e)
	require.NoError(t, err)
	var doc map[string]any
	require.NoError(t, json.Unmarshal(b, &doc))
	fields := map[string]bool{}
	leaves("", doc, fields)

	mapped := mappedFields(t)
	var unmapped []string
	for f := range fields {
		if _, ok := mapped[f]; ok {
			continue
		}
		if i := strings.LastIndexByte(f, '.'); i > 0 && mapped[f[:i]]["type"] == "flattened" {
			continue
		}
		unmapped = append(unmapped, f)
	}
	sort.Strings(unmapped)
	require.Empty(t, unmapped, "fields of pkg/event without a mapping in templates/component.json")
	for f, m := range mapped {
		has := fields[f]
		if m["type"] == "flattened" {
			for g := range fields {
				has = has || strings.HasPrefix(g, f+".")
			}
		}
		require.True(t, has, "templates/component.json maps %s, which pkg/event does not have", f)
	}
}

func TestComponentTemplateTypes(t *testing.T) {
	t.Parallel()
	mapped := mappedFields(t)
	for field, want := range map[string]string{
		"@timestamp":           "date",
		"event.id":             "keyword",
		"event.severity":       "long",
		"host.name":            "keyword",
		"container.id":         "keyword",
		"container.name":       "keyword",
		"container.labels":     "flattened",
		"process.pid":          "long",
		"process.name":         "keyword",
		"process.command_line": "wildcard",
		"message":              "match_only_text",
		"source.ip":            "ip",
		"destination.ip":       "ip",
		"rule.id":              "keyword",
		"whalewatch.severity":  "keyword",
		"whalewatch.trigger":   "keyword",
	} {
		require.Equal(t, want, mapped[field]["type"], field)
	}
	text := mapped["process.command_line"]["fields"].(map[string]any)["text"].(map[string]any)
	require.Equal(t, "match_only_text", text["type"], "process.command_line.text")
}

func TestIndexTemplates(t *testing.T) {
	t.Parallel()
	r := RetentionConfig{Threats: 365 * 24 * time.Hour, Response: 365 * 24 * time.Hour, Telemetry: 14 * 24 * time.Hour}
	seen := map[int][]string{}
	for _, k := range kinds {
		var tmpl struct {
			IndexPatterns []string        `json:"index_patterns"`
			DataStream    json.RawMessage `json:"data_stream"`
			Priority      int             `json:"priority"`
			ComposedOf    []string        `json:"composed_of"`
			Template      struct {
				Settings map[string]string `json:"settings"`
			} `json:"template"`
		}
		require.NoError(t, json.Unmarshal(indexTemplateJSON(k), &tmpl))
		require.JSONEq(t, `{}`, string(tmpl.DataStream))
		require.Greater(t, tmpl.Priority, 100, "must outrank the built-in logs-*-* template")
		require.Equal(t, []string{ComponentTemplate, CustomComponentTemplate}, tmpl.ComposedOf)
		require.Equal(t, k.policy, tmpl.Template.Settings["index.lifecycle.name"], "own lifecycle instead of logs'")
		seen[tmpl.Priority] = append(seen[tmpl.Priority], tmpl.IndexPatterns...)
		require.NotEmpty(t, policyJSON(k.keep(r)))
	}
	require.Equal(t, []string{"logs-whalewatch.*-*"}, seen[200])
	require.ElementsMatch(t, []string{"logs-whalewatch.threat-*", "logs-whalewatch.response-*"}, seen[210])
}

func TestPolicyJSON(t *testing.T) {
	t.Parallel()
	tests := []struct {
		keep time.Duration
		want string
	}{
		{14 * 24 * time.Hour, `{"policy":{"_meta":{"managed_by":"whalewatch-indexer"},"phases":{"hot":{"actions":{"rollover":{"max_age":"1d","max_primary_shard_size":"50gb"}}},"delete":{"min_age":"14d","actions":{"delete":{}}}}}}`},
		{365 * 24 * time.Hour, `{"policy":{"_meta":{"managed_by":"whalewatch-indexer"},"phases":{"hot":{"actions":{"rollover":{"max_age":"7d","max_primary_shard_size":"50gb"}}},"delete":{"min_age":"365d","actions":{"delete":{}}}}}}`},
		{36 * time.Hour, `{"policy":{"_meta":{"managed_by":"whalewatch-indexer"},"phases":{"hot":{"actions":{"rollover":{"max_age":"1d","max_primary_shard_size":"50gb"}}},"delete":{"min_age":"36h","actions":{"delete":{}}}}}}`},
		{0, `{"policy":{"_meta":{"managed_by":"whalewatch-indexer"},"phases":{"hot":{"actions":{"rollover":{"max_age":"7d","max_primary_shard_size":"50gb"}}}}}}`},
	}
	for _, tt := range tests {
		require.JSONEq(t, tt.want, string(policyJSON(tt.keep)), tt.keep.String())
	}
}

// Templates install on a node that validates them, and installing is idempotent.
func TestInstallTemplates(t *testing.T) {
	t.Parallel()
	es := esstub.New(t)
	client, err := NewClient(ESConfig{URLs: es.URL})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r := RetentionConfig{Threats: 24 * time.Hour, Response: 48 * time.Hour, Telemetry: 72 * time.Hour}
	require.NoError(t, InstallTemplates(ctx, client, r))
	require.NoError(t, InstallTemplates(ctx, client, r))
	got := es.Templates()
	require.JSONEq(t, string(ComponentTemplateJSON), string(got.Component[ComponentTemplate].Body))
	for _, k := range kinds {
		require.JSONEq(t, string(indexTemplateJSON(k)), string(got.Index[k.template].Body))
		require.Less(t, got.Component[ComponentTemplate].Seq, got.Index[k.template].Seq, "component template first")
		p, ok := es.Policies()[k.policy]
		require.True(t, ok, "policy %s", k.policy)
		require.JSONEq(t, string(policyJSON(k.keep(r))), string(p.Body))
		require.Less(t, p.Seq, got.Index[k.template].Seq, "policy before the template naming it")
	}

	// Each kind of data stream gets its own template and lifecycle.
	es.Reset()
	s := NewESSink(client, ESConfig{Namespace: "default", Timeout: 5 * time.Second, MaxBulkBytes: 1 << 20}, testLogger(t), prometheus.NewRegistry())
	resp := telemetry(event.TelemetryProcess)
	resp.Whalewatch.Telemetry, resp.Event.Dataset = "", event.DatasetResponse
	require.Equal(t, []error{nil, nil, nil}, s.Write(ctx, docsOf(t, threat("r"), telemetry(event.TelemetryLog), resp)))
	for ds, want := range map[string]string{
		"logs-whalewatch.threat-default":   "whalewatch-threats",
		"logs-whalewatch.log-default":      "whalewatch-telemetry",
		"logs-whalewatch.response-default": "whalewatch-response",
	} {
		require.Equal(t, want, es.DataStreams()[ds].Lifecycle, ds)
	}

	// A later run with another retention overwrites the policy.
	r.Telemetry = 5 * 24 * time.Hour
	require.NoError(t, InstallTemplates(ctx, client, r))
	require.Contains(t, string(es.Policies()["whalewatch-telemetry"].Body), `"min_age":"5d"`)

	es.SetDown(true)
	require.Error(t, InstallTemplates(ctx, client, r))
}

func TestInstallTemplatesRetry(t *testing.T) {
	t.Parallel()
	es := esstub.New(t)
	es.SetUnavailable(true)
	client, err := NewClient(ESConfig{URLs: es.URL})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	failures := make(chan error, 100)
	done := make(chan error, 1)
	go func() {
		done <- InstallTemplatesRetry(ctx, client, RetentionConfig{}, func(err error) { failures <- err })
	}()
	require.ErrorContains(t, <-failures, "503")
	es.SetUnavailable(false)
	require.NoError(t, <-done)
	require.Contains(t, es.Templates().Index, IndexTemplate)

	cancelled, cancelNow := context.WithCancel(context.Background())
	cancelNow()
	require.ErrorIs(t, InstallTemplatesRetry(cancelled, client, RetentionConfig{}, func(error) {}), context.Canceled)
}
