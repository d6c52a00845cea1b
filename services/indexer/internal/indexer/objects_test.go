package indexer

import (
	"bufio"
	"bytes"
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/services/indexer/internal/kibana"
)

type savedObject struct {
	Type       string         `json:"type"`
	ID         string         `json:"id"`
	Attributes map[string]any `json:"attributes"`
	References []objectRef    `json:"references"`
}

type objectRef struct {
	Name string `json:"name"`
	Type string `json:"type"`
	ID   string `json:"id"`
}

func savedObjects(t *testing.T) []savedObject {
	t.Helper()
	var out []savedObject
	sc := bufio.NewScanner(bytes.NewReader(kibana.Objects))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var o savedObject
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.DisallowUnknownFields()
		require.NoError(t, dec.Decode(&struct {
			*savedObject
			CoreMigrationVersion string `json:"coreMigrationVersion"`
			TypeMigrationVersion string `json:"typeMigrationVersion"`
			Managed              bool   `json:"managed"`
		}{savedObject: &o}), sc.Text())
		require.NotEmpty(t, o.Type)
		require.NotEmpty(t, o.ID)
		require.NotEmpty(t, o.Attributes["title"], o.ID)
		out = append(out, o)
	}
	require.NoError(t, sc.Err())
	return out
}

// aggregatable are the mapping types terms, sorts and histograms take.
var aggregatable = []string{"keyword", "constant_keyword", "long", "integer", "short", "byte", "double", "float",
	"half_float", "scaled_float", "unsigned_long", "date", "date_nanos", "ip", "boolean"}

// allFields is every searchable field: mapped fields and their multi-fields.
func allFields(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for f, m := range mappedFields(t) {
		out[f], _ = m["type"].(string)
		if sub, ok := m["fields"].(map[string]any); ok {
			for name, def := range sub {
				out[f+"."+name], _ = def.(map[string]any)["type"].(string)
			}
		}
	}
	return out
}

var kqlField = regexp.MustCompile(`([A-Za-z@_][\w.@]*)\s*:`)

// The saved objects parse, every reference resolves, every data view
// matches whalewatch data streams, and every field they use is mapped with
// a type its use accepts.
func TestKibanaObjects(t *testing.T) {
	t.Parallel()
	objs := savedObjects(t)
	fields := allFields(t)
	byKey := map[string]savedObject{}
	for _, o := range objs {
		require.NotContains(t, byKey, o.Type+"/"+o.ID, "duplicate object")
		byKey[o.Type+"/"+o.ID] = o
	}
	var datasets []string
	for _, k := range event.Telemetries {
		datasets = append(datasets, k.Dataset())
	}
	datasets = append(datasets, event.DatasetThreat, event.DatasetResponse)

	requireField := func(o savedObject, f string, types ...string) {
		typ, ok := fields[f]
		require.True(t, ok, "%s %s uses %s, which the templates do not map", o.Type, o.ID, f)
		if len(types) > 0 {
			require.Contains(t, types, typ, "%s %s uses %s (%s) where it needs one of %v", o.Type, o.ID, f, typ, types)
		}
	}
	checkSearchSource := func(o savedObject) {
		meta, _ := o.Attributes["kibanaSavedObjectMeta"].(map[string]any)
		require.NotNil(t, meta, o.ID)
		var ss struct {
			Query struct {
				Query    string `json:"query"`
				Language string `json:"language"`
			} `json:"query"`
			IndexRefName string `json:"indexRefName"`
		}
		require.NoError(t, json.Unmarshal([]byte(meta["searchSourceJSON"].(string)), &ss), o.ID)
		for _, m := range kqlField.FindAllStringSubmatch(ss.Query.Query, -1) {
			requireField(o, m[1])
		}
		if o.Type != "dashboard" {
			require.NotEmpty(t, ss.IndexRefName, o.ID)
		}
		if ss.IndexRefName != "" {
			require.True(t, slices.ContainsFunc(o.References, func(r objectRef) bool {
				return r.Name == ss.IndexRefName && r.Type == "index-pattern"
			}), "%s: no index-pattern reference named %s", o.ID, ss.IndexRefName)
		}
	}

	seen := map[string]int{}
	for _, o := range objs {
		seen[o.Type]++
		for _, r := range o.References {
			require.Contains(t, byKey, r.Type+"/"+r.ID, "%s %s references a missing %s %s", o.Type, o.ID, r.Type, r.ID)
		}
		switch o.Type {
		case "index-pattern":
			require.Equal(t, "@timestamp", o.Attributes["timeFieldName"])
			requireField(o, "@timestamp", "date")
			for _, p := range strings.Split(o.Attributes["title"].(string), ",") {
				require.True(t, slices.ContainsFunc(datasets, func(ds string) bool {
					return globMatch(p, DataStreamType+"-"+ds+"-default")
				}), "data view %s: pattern %s matches no whalewatch data stream", o.ID, p)
			}
		case "search":
			checkSearchSource(o)
			for _, c := range o.Attributes["columns"].([]any) {
				requireField(o, c.(string))
			}
			for _, s := range o.Attributes["sort"].([]any) {
				requireField(o, s.([]any)[0].(string), aggregatable...)
			}
		case "visualization":
			checkSearchSource(o)
			var vs struct {
				Aggs []struct {
					Type   string `json:"type"`
					Params struct {
						Field string `json:"field"`
					} `json:"params"`
				} `json:"aggs"`
			}
			require.NoError(t, json.Unmarshal([]byte(o.Attributes["visState"].(string)), &vs), o.ID)
			require.NotEmpty(t, vs.Aggs)
			for _, a := range vs.Aggs {
				switch a.Type {
				case "count":
				case "date_histogram":
					requireField(o, a.Params.Field, "date", "date_nanos")
				case "terms", "cardinality":
					requireField(o, a.Params.Field, aggregatable...)
				default:
					t.Fatalf("%s: aggregation %s not checked by this test", o.ID, a.Type)
				}
			}
		case "dashboard":
			checkSearchSource(o)
			var panels []struct {
				PanelRefName string `json:"panelRefName"`
			}
			require.NoError(t, json.Unmarshal([]byte(o.Attributes["panelsJSON"].(string)), &panels))
			require.NotEmpty(t, panels)
			for _, p := range panels {
				require.True(t, slices.ContainsFunc(o.References, func(r objectRef) bool { return r.Name == p.PanelRefName }),
					"dashboard %s: panel %s has no reference", o.ID, p.PanelRefName)
			}
		default:
			t.Fatalf("object type %s not checked by this test", o.Type)
		}
	}
	require.Equal(t, 3, seen["index-pattern"], "data views for threats, telemetry and response")
	require.Equal(t, 1, seen["dashboard"])
}

// globMatch matches Kibana's and Elasticsearch's '*' patterns.
func globMatch(pattern, s string) bool {
	re := regexp.MustCompile("^" + strings.ReplaceAll(regexp.QuoteMeta(pattern), `\*`, ".*") + "$")
	return re.MatchString(s)
}
