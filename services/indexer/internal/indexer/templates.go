package indexer

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/elastic/go-elasticsearch/v8"
	"github.com/elastic/go-elasticsearch/v8/esapi"
)

// ComponentTemplate maps every field of pkg/event the ECS way (keyword for
// ids and names, wildcard plus match_only_text for command lines, flattened
// for container labels, whose keys a container chooses, constant_keyword
// for data_stream.*).
const ComponentTemplate = "whalewatch@mappings"

// CustomComponentTemplate is the operator's own component template, applied
// last by every whalewatch index template when it exists (like logs@custom).
const CustomComponentTemplate = "whalewatch@custom"

// IndexTemplate is the index template of telemetry data streams: every
// logs-whalewatch.*-* at priority 200, above Elasticsearch's built-in "logs"
// template (logs-*-*, priority 100). It replaces that template for these data
// streams, and with it its lifecycle: each whalewatch index template names
// its own ILM policy, so retention is whalewatch's, per kind.
const IndexTemplate = "whalewatch"

// ComponentTemplateJSON is the component template.
//
//go:embed templates/component.json
var ComponentTemplateJSON []byte

// templateVersion is the version of the index templates; bump it when they
// change.
const templateVersion = 2

// kind is one kind of data stream with its own index template and lifecycle.
type kind struct {
	template string
	pattern  string
	priority int
	policy   string
	keep     func(RetentionConfig) time.Duration
}

// kinds: threats and response actions outrank the telemetry template,
// whose pattern covers them too.
var kinds = []kind{
	{IndexTemplate, "logs-whalewatch.*-*", 200, "whalewatch-telemetry", func(r RetentionConfig) time.Duration { return r.Telemetry }},
	{"whalewatch-threat", "logs-whalewatch.threat-*", 210, "whalewatch-threats", func(r RetentionConfig) time.Duration { return r.Threats }},
	{"whalewatch-response", "logs-whalewatch.response-*", 210, "whalewatch-response", func(r RetentionConfig) time.Duration { return r.Response }},
}

// IndexTemplates lists the index templates, by name.
func IndexTemplates() []string {
	out := make([]string, len(kinds))
	for i, k := range kinds {
		out[i] = k.template
	}
	return out
}

// LifecyclePolicies maps each index template to its ILM policy.
func LifecyclePolicies() map[string]string {
	out := map[string]string{}
	for _, k := range kinds {
		out[k.template] = k.policy
	}
	return out
}

// indexTemplateJSON is the index template of k.
func indexTemplateJSON(k kind) []byte {
	b, _ := json.Marshal(map[string]any{
		"index_patterns":                     []string{k.pattern},
		"data_stream":                        map[string]any{},
		"priority":                           k.priority,
		"composed_of":                        []string{ComponentTemplate, CustomComponentTemplate},
		"ignore_missing_component_templates": []string{CustomComponentTemplate},
		"template": map[string]any{"settings": map[string]any{
			"index.lifecycle.name": k.policy,
		}},
		"version": templateVersion,
		"_meta": map[string]any{
			"managed_by":  "whalewatch-indexer",
			"description": "whalewatch data streams " + k.pattern + ", ILM policy " + k.policy,
		},
	})
	return b
}

// ilmDuration renders d in Elasticsearch time units: whole days, else
// whole hours.
func ilmDuration(d time.Duration) string {
	if d%(24*time.Hour) == 0 {
		return strconv.FormatInt(int64(d/(24*time.Hour)), 10) + "d"
	}
	return strconv.FormatInt(int64(d.Round(time.Hour)/time.Hour), 10) + "h"
}

// policyJSON is an ILM policy that rolls the write index over daily (weekly
// when documents are kept a year or more) or at 50 GB a shard, and deletes a
// backing index keep after its rollover; keep 0 keeps it for ever.
func policyJSON(keep time.Duration) []byte {
	rollover := "1d"
	if keep == 0 || keep >= 180*24*time.Hour {
		rollover = "7d"
	}
	phases := map[string]any{
		"hot": map[string]any{"actions": map[string]any{
			"rollover": map[string]any{"max_age": rollover, "max_primary_shard_size": "50gb"},
		}},
	}
	if keep > 0 {
		phases["delete"] = map[string]any{"min_age": ilmDuration(keep), "actions": map[string]any{"delete": map[string]any{}}}
	}
	b, _ := json.Marshal(map[string]any{"policy": map[string]any{
		"phases": phases,
		"_meta":  map[string]any{"managed_by": "whalewatch-indexer"},
	}})
	return b
}

// InstallTemplates puts the ILM policies, the component template, then the
// index templates that use them. Every PUT replaces what is there, so every
// start (and every `indexer setup`) may install them, and an upgrade or a
// new retention overwrites them; an ILM policy change applies to existing
// backing indices too.
func InstallTemplates(ctx context.Context, c *elasticsearch.Client, r RetentionConfig) error {
	for _, k := range kinds {
		res, err := esapi.ILMPutLifecycleRequest{Policy: k.policy, Body: bytes.NewReader(policyJSON(k.keep(r)))}.Do(ctx, c)
		if err := checkResponse("ILM policy "+k.policy, res, err); err != nil {
			return err
		}
	}
	res, err := esapi.ClusterPutComponentTemplateRequest{Name: ComponentTemplate, Body: bytes.NewReader(ComponentTemplateJSON)}.Do(ctx, c)
	if err := checkResponse("component template "+ComponentTemplate, res, err); err != nil {
		return err
	}
	for _, k := range kinds {
		res, err = esapi.IndicesPutIndexTemplateRequest{Name: k.template, Body: bytes.NewReader(indexTemplateJSON(k))}.Do(ctx, c)
		if err := checkResponse("index template "+k.template, res, err); err != nil {
			return err
		}
	}
	return nil
}

// InstallTemplatesRetry calls InstallTemplates until it succeeds or ctx ends,
// backing off from 100 ms to 5 s, so the indexer may start before
// Elasticsearch does. It returns ctx's error when ctx ended first.
func InstallTemplatesRetry(ctx context.Context, c *elasticsearch.Client, r RetentionConfig, onErr func(error)) error {
	return retry(ctx, func() error { return InstallTemplates(ctx, c, r) }, onErr)
}

func checkResponse(what string, res *esapi.Response, err error) error {
	if err != nil {
		return fmt.Errorf("installing %s: %w", what, err)
	}
	defer res.Body.Close()
	if !res.IsError() {
		_, _ = io.Copy(io.Discard, res.Body)
		return nil
	}
	var e struct {
		Error esError `json:"error"`
	}
	_ = json.NewDecoder(io.LimitReader(res.Body, 64<<10)).Decode(&e)
	return fmt.Errorf("installing %s: %s: %s", what, res.Status(), e.Error.String())
}
