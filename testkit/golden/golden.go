// Package golden compares test output with files checked into the repo;
// `go test ./... -update` rewrites them.
package golden

import (
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files with the current output")

// Check fails the test when got differs from the file at path, or rewrites
// the file under -update.
func Check(tb testing.TB, path string, got []byte) {
	tb.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			tb.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		tb.Fatalf("reading golden file (run go test with -update to create it): %v", err)
	}
	if string(want) != string(got) {
		tb.Fatalf("%s is out of date; run go test with -update and commit it.\n--- want\n%s\n--- got\n%s", path, want, got)
	}
}
