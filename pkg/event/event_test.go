package event

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestDecodeTestdata(t *testing.T) {
	t.Parallel()
	good, _ := filepath.Glob("testdata/*.good.json")
	bad, _ := filepath.Glob("testdata/*.bad.json")
	if len(good) == 0 || len(bad) == 0 {
		t.Fatal("no testdata")
	}
	for _, f := range good {
		t.Run(filepath.Base(f), func(t *testing.T) {
			t.Parallel()
			data := mustRead(t, f)
			e, err := Decode(data)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			// Round trip: what we encode decodes to the same document.
			again, err := Marshal(e)
			if err != nil {
				t.Fatal(err)
			}
			if !jsonEqual(t, data, again) {
				t.Fatalf("round trip changed the document:\n%s\n%s", data, again)
			}
		})
	}
	for _, f := range bad {
		t.Run(filepath.Base(f), func(t *testing.T) {
			t.Parallel()
			want := strings.TrimSpace(string(mustRead(t, strings.TrimSuffix(f, ".json")+".err")))
			_, err := Decode(mustRead(t, f))
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Decode error %v, want ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("Decode error\n%v\nwant it to contain\n%s", err, want)
			}
		})
	}
}

func TestDecodeRejectsOversizedDocument(t *testing.T) {
	t.Parallel()
	_, err := Decode(bytes.Repeat([]byte(" "), MaxDocument+1))
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("got %v, want ErrInvalid", err)
	}
}

func TestValidateRejectsUnboundedFields(t *testing.T) {
	t.Parallel()
	e := valid()
	e.Process = &Process{CommandLine: strings.Repeat("A", MaxCommandLine+1)}
	err := e.Validate()
	if err == nil || !strings.Contains(err.Error(), "exceeds its length limit") {
		t.Fatalf("got %v", err)
	}
	if len(e.Process.CommandLine) != MaxCommandLine+1 {
		t.Fatal("Validate modified the event")
	}
	e.Bound()
	if err := e.Validate(); err != nil {
		t.Fatalf("after Bound: %v", err)
	}
}

func TestBound(t *testing.T) {
	t.Parallel()
	labels := map[string]string{}
	for i := 0; i < MaxLabels+10; i++ {
		labels[strings.Repeat("k", i+1)] = strings.Repeat("v", MaxLabelValue+5)
	}
	args := make([]string, MaxArgs+36)
	for i := range args {
		args[i] = strings.Repeat("a", MaxArg*2)
	}
	e := valid()
	e.Container = &Container{ID: "c", Name: strings.Repeat("n", 1000), Labels: labels}
	e.Process = &Process{Name: "x\xff\xfe", CommandLine: strings.Repeat("é", MaxCommandLine), Args: args}
	if !e.Bound() {
		t.Fatal("Bound reported nothing cut")
	}
	if e.Bound() {
		t.Fatal("Bound is not idempotent")
	}
	p := e.Process
	if len(p.Args) != MaxArgs || p.ArgsCount != MaxArgs+36 {
		t.Fatalf("args %d count %d", len(p.Args), p.ArgsCount)
	}
	if len(p.CommandLine) > MaxCommandLine || !utf8.ValidString(p.CommandLine) || !strings.HasSuffix(p.CommandLine, Ellipsis) {
		t.Fatalf("command line %d bytes, valid=%v", len(p.CommandLine), utf8.ValidString(p.CommandLine))
	}
	if p.Name != "x\uFFFD" {
		t.Fatalf("name %q", p.Name)
	}
	if len(e.Container.Labels) != MaxLabels || len(e.Container.Name) > MaxName {
		t.Fatalf("labels %d name %d", len(e.Container.Labels), len(e.Container.Name))
	}
	// The same labels survive every time: the shortest keys sort first.
	if _, ok := e.Container.Labels["k"]; !ok {
		t.Fatal("label k dropped")
	}
}

func TestTruncate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		max  int
		want string
	}{
		{"short", 10, "short"},
		{"exactly10!", 10, "exactly10!"},
		{"0123456789abc", 10, "0123456…"},
		{"ééééé", 6, "é…"}, // never splits a rune
		{"a\xffb", 10, "a\uFFFDb"},
		{"abc", 1, "…"},
	}
	for _, tt := range tests {
		if got := Truncate(tt.in, tt.max); got != tt.want {
			t.Errorf("Truncate(%q, %d) = %q, want %q", tt.in, tt.max, got, tt.want)
		}
	}
}

func TestDeriveID(t *testing.T) {
	t.Parallel()
	a := DeriveID("threat", "r1", "e1")
	if a != DeriveID("threat", "r1", "e1") {
		t.Fatal("DeriveID is not stable")
	}
	if a == DeriveID("threat", "r1e1") || a == DeriveID("threat", "r", "1e1") {
		t.Fatal("DeriveID ignores part boundaries")
	}
	if len(a) != 32 || len(NewID()) != 32 || NewID() == NewID() {
		t.Fatal("bad id format or NewID repeats")
	}
}

func TestSeverity(t *testing.T) {
	t.Parallel()
	prev := 0
	for _, s := range Severities {
		if s.Score() <= prev {
			t.Fatalf("%s score %d not above %d", s, s.Score(), prev)
		}
		prev = s.Score()
		if got, err := ParseSeverity(string(s)); err != nil || got != s {
			t.Fatalf("ParseSeverity(%s) = %v, %v", s, got, err)
		}
	}
	if _, err := ParseSeverity("urgent"); err == nil {
		t.Fatal("ParseSeverity accepted urgent")
	}
}

func FuzzDecode(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.json")
	for _, p := range files {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := Decode(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error not ErrInvalid: %v", err)
			}
			return
		}
		// Whatever decodes is valid, bounded and encodes again.
		if e.exceedsBounds() {
			t.Fatal("decoded event exceeds bounds")
		}
		if _, err := Marshal(e); err != nil {
			t.Fatal(err)
		}
	})
}

func valid() *Event {
	return &Event{
		Event:      Meta{ID: NewID(), Kind: KindEvent},
		Host:       Host{Name: "h"},
		Whalewatch: Whalewatch{SchemaVersion: SchemaVersion},
		Timestamp:  mustTime(),
	}
}

func mustRead(tb testing.TB, p string) []byte {
	tb.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func jsonEqual(tb testing.TB, a, b []byte) bool {
	tb.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		tb.Fatal(err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		tb.Fatal(err)
	}
	xs, _ := json.Marshal(x)
	ys, _ := json.Marshal(y)
	return bytes.Equal(xs, ys)
}

func mustTime() (t time.Time) {
	t, _ = time.Parse(time.RFC3339, "2026-11-26T19:40:00Z")
	return t
}
