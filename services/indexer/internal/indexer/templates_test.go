package indexer

import (
	"context"
	"encoding/json"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

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

func TestIndexTemplate(t *testing.T) {
	t.Parallel()
	var tmpl struct {
		IndexPatterns []string        `json:"index_patterns"`
		DataStream    json.RawMessage `json:"data_stream"`
		Priority      int             `json:"priority"`
		ComposedOf    []string        `json:"composed_of"`
	}
	require.NoError(t, json.Unmarshal(IndexTemplateJSON, &tmpl))
	require.Equal(t, []string{"logs-whalewatch.*-*"}, tmpl.IndexPatterns)
	require.JSONEq(t, `{}`, string(tmpl.DataStream))
	require.Greater(t, tmpl.Priority, 100, "must outrank the built-in logs-*-* template")
	require.Equal(t, []string{ComponentTemplate}, tmpl.ComposedOf)
}

// Templates install on a node that validates them, and installing is idempotent.
func TestInstallTemplates(t *testing.T) {
	t.Parallel()
	es := esstub.New(t)
	client, err := NewClient(ESConfig{URLs: es.URL})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, InstallTemplates(ctx, client))
	require.NoError(t, InstallTemplates(ctx, client))
	got := es.Templates()
	require.JSONEq(t, string(ComponentTemplateJSON), string(got.Component[ComponentTemplate].Body))
	require.JSONEq(t, string(IndexTemplateJSON), string(got.Index[IndexTemplate].Body))
	require.Less(t, got.Component[ComponentTemplate].Seq, got.Index[IndexTemplate].Seq, "component template first")

	es.SetDown(true)
	require.Error(t, InstallTemplates(ctx, client))
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
		done <- InstallTemplatesRetry(ctx, client, func(err error) { failures <- err })
	}()
	require.ErrorContains(t, <-failures, "503")
	es.SetUnavailable(false)
	require.NoError(t, <-done)
	require.Contains(t, es.Templates().Index, IndexTemplate)

	cancelled, cancelNow := context.WithCancel(context.Background())
	cancelNow()
	require.ErrorIs(t, InstallTemplatesRetry(cancelled, client, func(error) {}), context.Canceled)
}
