package indexer

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/elastic/go-elasticsearch/v8"
	"github.com/elastic/go-elasticsearch/v8/esapi"
)

// Template names. The index template outranks Elasticsearch's built-in
// "logs" template (logs-*-*, priority 100) for logs-whalewatch.*-*, so every
// whalewatch data stream gets the mappings below.
const (
	ComponentTemplate = "whalewatch@mappings"
	IndexTemplate     = "whalewatch"
)

// ComponentTemplateJSON maps every field of pkg/event the ECS way (keyword
// for ids and names, wildcard plus match_only_text for command lines,
// flattened for container labels, whose keys a container chooses).
//
//go:embed templates/component.json
var ComponentTemplateJSON []byte

// IndexTemplateJSON makes logs-whalewatch.*-* data streams of the component
// template.
//
//go:embed templates/index.json
var IndexTemplateJSON []byte

// InstallTemplates puts the component template, then the index template that
// uses it. Both PUTs replace what is there, so every start may install them.
func InstallTemplates(ctx context.Context, c *elasticsearch.Client) error {
	res, err := esapi.ClusterPutComponentTemplateRequest{Name: ComponentTemplate, Body: bytes.NewReader(ComponentTemplateJSON)}.Do(ctx, c)
	if err := checkResponse("component template "+ComponentTemplate, res, err); err != nil {
		return err
	}
	res, err = esapi.IndicesPutIndexTemplateRequest{Name: IndexTemplate, Body: bytes.NewReader(IndexTemplateJSON)}.Do(ctx, c)
	return checkResponse("index template "+IndexTemplate, res, err)
}

// InstallTemplatesRetry calls InstallTemplates until it succeeds or ctx ends,
// backing off from 100 ms to 5 s, so the indexer may start before
// Elasticsearch does. It returns ctx's error when ctx ended first.
func InstallTemplatesRetry(ctx context.Context, c *elasticsearch.Client, onErr func(error)) error {
	delay := 100 * time.Millisecond
	for {
		err := InstallTemplates(ctx, c)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		onErr(err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
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
