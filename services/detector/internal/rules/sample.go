package rules

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/services/detector/internal/state"
)

// Sample is one line of a rules test file (JSON lines). A line is either a
// recorded telemetry event as it travels on NATS, or a sample object:
//
//	{"event": {...telemetry...}, "state": {"distinct_dest_ports": 40}, "expect": ["port-scan-connection-fanout"]}
//
// state holds the snapshot fields by their `state.` names (as a Tracker would
// have answered); expect lists exactly the rule ids the event must raise ([]
// for none). Without expect the line is only evaluated and printed.
type Sample struct {
	Line   int
	Event  *event.Event
	State  state.Snapshot
	Expect []string // nil: no expectation
}

type sampleJSON struct {
	Event  json.RawMessage            `json:"event"`
	State  map[string]json.RawMessage `json:"state"`
	Expect *[]string                  `json:"expect"`
}

// maxSampleLine bounds one line of a samples file (an event is at most 1 MiB).
const maxSampleLine = 2 << 20

// ReadSamples reads a JSON-lines samples file. Blank lines and lines
// starting with // are skipped.
func ReadSamples(r io.Reader) ([]Sample, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxSampleLine)
	var out []Sample
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || bytes.HasPrefix(line, []byte("//")) {
			continue
		}
		s, err := parseSample(line)
		if err != nil {
			return out, fmt.Errorf("line %d: %w", n, err)
		}
		s.Line = n
		out = append(out, s)
	}
	return out, sc.Err()
}

func parseSample(line []byte) (Sample, error) {
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(line, &probe); err != nil {
		return Sample{}, err
	}
	var s Sample
	evJSON := line
	if _, bare := probe["whalewatch"]; !bare {
		var sj sampleJSON
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&sj); err != nil {
			return Sample{}, err
		}
		if len(sj.Event) == 0 {
			return Sample{}, fmt.Errorf(`want a telemetry event or {"event": ..., "state": ..., "expect": [...]}`)
		}
		evJSON = sj.Event
		if err := decodeState(sj.State, &s.State); err != nil {
			return Sample{}, err
		}
		if sj.Expect != nil {
			s.Expect = append([]string{}, *sj.Expect...)
		}
	}
	var e event.Event
	if err := json.Unmarshal(evJSON, &e); err != nil {
		return Sample{}, fmt.Errorf("event: %w", err)
	}
	if e.Event.Kind == "" {
		e.Event.Kind = event.KindEvent
	}
	e.Bound()
	s.Event = &e
	return s, nil
}

// decodeState sets the fields of st named (by their expr tags) in m.
func decodeState(m map[string]json.RawMessage, st *state.Snapshot) error {
	v := reflect.ValueOf(st).Elem()
	t := v.Type()
	for k, raw := range m {
		found := false
		for i := 0; i < t.NumField(); i++ {
			if t.Field(i).Tag.Get("expr") == k {
				if err := json.Unmarshal(raw, v.Field(i).Addr().Interface()); err != nil {
					return fmt.Errorf("state.%s: %w", k, err)
				}
				found = true
				break
			}
		}
		if !found {
			return fmt.Errorf("state.%s: no such field", k)
		}
	}
	return nil
}

// Result is what a sample raised.
type Result struct {
	Sample  *Sample
	Matches []Match
	// Failure says how the matches differ from the sample's expectation, "" if they don't.
	Failure string
}

// Check evaluates s on set and compares the rule ids raised with the
// expectation.
func Check(set *Set, s *Sample) Result {
	st := s.State
	res := Result{Sample: s, Matches: set.Evaluate(s.Event, &st)}
	if s.Expect == nil {
		return res
	}
	got := make([]string, 0, len(res.Matches))
	for _, m := range res.Matches {
		got = append(got, m.Rule.ID)
	}
	want := slices.Clone(s.Expect)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		res.Failure = fmt.Sprintf("want [%s], got [%s]", strings.Join(want, " "), strings.Join(got, " "))
	}
	return res
}
