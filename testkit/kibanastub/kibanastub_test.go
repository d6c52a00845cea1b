package kibanastub

import (
	"bytes"
	"encoding/json"
	"mime/multipart"
	"net/http"
	"testing"
)

func post(t *testing.T, s *Server, path, filename, ndjson string, xsrf bool) (int, map[string]any) {
	t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	fw, _ := mw.CreateFormFile("file", filename)
	_, _ = fw.Write([]byte(ndjson))
	_ = mw.Close()
	req, _ := http.NewRequest(http.MethodPost, s.URL+path, &body)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	if xsrf {
		req.Header.Set("kbn-xsrf", "true")
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(res.Body).Decode(&out)
	return res.StatusCode, out
}

func TestImport(t *testing.T) {
	t.Parallel()
	view := `{"type":"index-pattern","id":"v","attributes":{"title":"logs-*"},"references":[]}`
	search := `{"type":"search","id":"s","attributes":{"title":"S"},"references":[{"name":"kibanaSavedObjectMeta.searchSourceJSON.index","type":"index-pattern","id":"v"}]}`
	dangling := `{"type":"search","id":"d","attributes":{"title":"D"},"references":[{"name":"x","type":"index-pattern","id":"nope"}]}`
	weird := `{"type":"weird","id":"w","attributes":{"title":"W"}}`
	tests := []struct {
		name, path, file, body string
		xsrf                   bool
		status                 int
		success                bool
		errTypes               []string
	}{
		{"imports", "/api/saved_objects/_import?overwrite=true", "a.ndjson", view + "\n" + search + "\n", true, 200, true, nil},
		{"no xsrf", "/api/saved_objects/_import?overwrite=true", "a.ndjson", view, false, 400, false, nil},
		{"not ndjson", "/api/saved_objects/_import", "a.json", view, true, 400, false, nil},
		{"unknown parameter", "/api/saved_objects/_import?force=true", "a.ndjson", view, true, 400, false, nil},
		{"per-object errors", "/api/saved_objects/_import", "a.ndjson", view + "\n" + dangling + "\n" + weird, true, 200, false, []string{"missing_references", "unsupported_type"}},
		{"space", "/s/ops/api/saved_objects/_import", "a.ndjson", view, true, 200, true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := New(t)
			status, out := post(t, s, tt.path, tt.file, tt.body, tt.xsrf)
			if status != tt.status {
				t.Fatalf("status %d, want %d: %v", status, tt.status, out)
			}
			if status != 200 {
				return
			}
			if out["success"] != tt.success {
				t.Fatalf("success %v: %v", out["success"], out)
			}
			errs, _ := out["errors"].([]any)
			if len(errs) != len(tt.errTypes) {
				t.Fatalf("errors %v, want %v", errs, tt.errTypes)
			}
			for i, e := range errs {
				if got := e.(map[string]any)["error"].(map[string]any)["type"]; got != tt.errTypes[i] {
					t.Errorf("error %d: %v, want %s", i, got, tt.errTypes[i])
				}
			}
		})
	}

	t.Run("conflict without overwrite, replaced with", func(t *testing.T) {
		t.Parallel()
		s := New(t)
		post(t, s, "/api/saved_objects/_import", "a.ndjson", view, true)
		_, out := post(t, s, "/api/saved_objects/_import", "a.ndjson", view, true)
		if out["success"] != false {
			t.Fatalf("want a conflict: %v", out)
		}
		_, out = post(t, s, "/api/saved_objects/_import?overwrite=true", "a.ndjson", view, true)
		if out["success"] != true || len(s.Objects("")) != 1 {
			t.Fatalf("want an overwrite: %v", out)
		}
	})

	t.Run("unavailable", func(t *testing.T) {
		t.Parallel()
		s := New(t)
		s.SetUnavailable(true)
		if status, _ := post(t, s, "/api/saved_objects/_import", "a.ndjson", view, true); status != 503 {
			t.Fatalf("status %d", status)
		}
	})
}
