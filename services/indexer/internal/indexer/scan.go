package indexer

import (
	"encoding/json"
	"errors"
	"fmt"
)

// maxDepth bounds the nesting of a document, as Elasticsearch does
// (index.mapping.depth.limit is 20 for fields; arrays add a little).
const maxDepth = 64

// scanDoc checks that data is one JSON object (and nothing else but
// whitespace) and reads the fields of p in the same pass: the indexer's
// replacement for json.Unmarshal into a probe, which scans each document
// twice and allocates for every skipped value. It reports whether a newline
// appears between tokens (the document must then be compacted for NDJSON).
func scanDoc(data []byte, p *probe) (newline bool, err error) {
	s := scanner{data: data}
	s.ws()
	if s.i >= len(s.data) || s.data[s.i] != '{' {
		return false, s.errorf("want a JSON object")
	}
	if err := s.object(0, "", p); err != nil {
		return false, err
	}
	s.ws()
	if s.i != len(s.data) {
		return false, s.errorf("data after the object")
	}
	return s.newline, nil
}

type scanner struct {
	data    []byte
	i       int
	depth   int
	newline bool
}

func (s *scanner) errorf(format string, args ...any) error {
	return fmt.Errorf("offset %d: %s", s.i, fmt.Sprintf(format, args...))
}

func (s *scanner) ws() {
	for s.i < len(s.data) {
		switch s.data[s.i] {
		case '\n':
			s.newline = true
		case ' ', '\t', '\r':
		default:
			return
		}
		s.i++
	}
}

// object scans an object at s.i; parent names the enclosing top-level key
// ("" at the top), whose fields p wants.
func (s *scanner) object(level int, parent string, p *probe) error {
	s.depth++
	if s.depth > maxDepth {
		return s.errorf("nested deeper than %d", maxDepth)
	}
	s.i++ // '{'
	s.ws()
	if s.i < len(s.data) && s.data[s.i] == '}' {
		s.i++
		s.depth--
		return nil
	}
	for {
		if s.i >= len(s.data) || s.data[s.i] != '"' {
			return s.errorf("want a key")
		}
		key, esc, err := s.str()
		if err != nil {
			return err
		}
		s.ws()
		if s.i >= len(s.data) || s.data[s.i] != ':' {
			return s.errorf("want ':'")
		}
		s.i++
		s.ws()
		if err := s.field(level, parent, key, esc, p); err != nil {
			return err
		}
		s.ws()
		if s.i >= len(s.data) {
			return s.errorf("unterminated object")
		}
		switch s.data[s.i] {
		case ',':
			s.i++
			s.ws()
		case '}':
			s.i++
			s.depth--
			return nil
		default:
			return s.errorf("want ',' or '}'")
		}
	}
}

// field scans the value of key, keeping it when p wants it.
func (s *scanner) field(level int, parent string, rawKey []byte, esc bool, p *probe) error {
	if level > 1 || esc || s.i >= len(s.data) {
		return s.value(p)
	}
	key := string(rawKey) // no allocation when compared only
	c := s.data[s.i]
	if level == 0 {
		switch {
		case c == '{' && (key == "event" || key == "host" || key == "rule" || key == "whalewatch"):
			if key == "rule" {
				p.Rule = &struct {
					ID string `json:"id"`
				}{}
			}
			return s.object(1, key, p)
		case key == "@timestamp" && c == '"':
			v, err := s.strValue()
			p.Timestamp = &v
			return err
		case key == "ecs" || key == "data_stream":
			start := s.i
			if err := s.value(p); err != nil {
				return err
			}
			if key == "ecs" {
				p.ECS = s.data[start:s.i]
			} else {
				p.DataStream = s.data[start:s.i]
			}
			return nil
		}
		return s.value(p)
	}
	var dst *string
	switch parent {
	case "event":
		switch key {
		case "id":
			dst = &p.Event.ID
		case "kind":
			dst = &p.Event.Kind
		case "dataset":
			dst = &p.Event.Dataset
		}
	case "host":
		if key == "name" {
			dst = &p.Host.Name
		}
	case "rule":
		if key == "id" {
			dst = &p.Rule.ID
		}
	case "whalewatch":
		switch key {
		case "schema_version":
			dst = &p.Whalewatch.SchemaVersion
		case "telemetry":
			dst = &p.Whalewatch.Telemetry
		case "severity":
			dst = &p.Whalewatch.Severity
		}
	}
	if dst == nil || c != '"' {
		return s.value(p)
	}
	v, err := s.strValue()
	*dst = v
	return err
}

// value scans any value.
func (s *scanner) value(p *probe) error {
	if s.i >= len(s.data) {
		return s.errorf("want a value")
	}
	switch c := s.data[s.i]; {
	case c == '{':
		return s.object(2, "", p)
	case c == '[':
		return s.array(p)
	case c == '"':
		_, _, err := s.str()
		return err
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	case c == '-' || (c >= '0' && c <= '9'):
		return s.number()
	}
	return s.errorf("unexpected %q", s.data[s.i])
}

func (s *scanner) array(p *probe) error {
	s.depth++
	if s.depth > maxDepth {
		return s.errorf("nested deeper than %d", maxDepth)
	}
	s.i++ // '['
	s.ws()
	if s.i < len(s.data) && s.data[s.i] == ']' {
		s.i++
		s.depth--
		return nil
	}
	for {
		if err := s.value(p); err != nil {
			return err
		}
		s.ws()
		if s.i >= len(s.data) {
			return s.errorf("unterminated array")
		}
		switch s.data[s.i] {
		case ',':
			s.i++
			s.ws()
		case ']':
			s.i++
			s.depth--
			return nil
		default:
			return s.errorf("want ',' or ']'")
		}
	}
}

func (s *scanner) literal(want string) error {
	if len(s.data)-s.i < len(want) || string(s.data[s.i:s.i+len(want)]) != want {
		return s.errorf("invalid literal")
	}
	s.i += len(want)
	return nil
}

func (s *scanner) digits() int {
	n := 0
	for s.i < len(s.data) && s.data[s.i] >= '0' && s.data[s.i] <= '9' {
		s.i++
		n++
	}
	return n
}

func (s *scanner) number() error {
	if s.data[s.i] == '-' {
		s.i++
	}
	if s.i < len(s.data) && s.data[s.i] == '0' {
		s.i++
	} else if s.digits() == 0 {
		return s.errorf("invalid number")
	}
	if s.i < len(s.data) && s.data[s.i] == '.' {
		s.i++
		if s.digits() == 0 {
			return s.errorf("invalid number")
		}
	}
	if s.i < len(s.data) && (s.data[s.i] == 'e' || s.data[s.i] == 'E') {
		s.i++
		if s.i < len(s.data) && (s.data[s.i] == '+' || s.data[s.i] == '-') {
			s.i++
		}
		if s.digits() == 0 {
			return s.errorf("invalid number")
		}
	}
	return nil
}

var errString = errors.New("invalid string")

// str scans a string at s.i and returns its raw content and whether it
// holds escapes.
func (s *scanner) str() ([]byte, bool, error) {
	s.i++ // '"'
	start := s.i
	esc := false
	for s.i < len(s.data) {
		c := s.data[s.i]
		switch {
		case c == '"':
			raw := s.data[start:s.i]
			s.i++
			return raw, esc, nil
		case c == '\\':
			esc = true
			s.i++
			if s.i >= len(s.data) {
				return nil, false, s.errorf("%v: unterminated escape", errString)
			}
			switch s.data[s.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i++
			case 'u':
				if len(s.data)-s.i < 5 || !isHex(s.data[s.i+1]) || !isHex(s.data[s.i+2]) || !isHex(s.data[s.i+3]) || !isHex(s.data[s.i+4]) {
					return nil, false, s.errorf("%v: bad \\u escape", errString)
				}
				s.i += 5
			default:
				return nil, false, s.errorf("%v: bad escape", errString)
			}
		case c < 0x20:
			return nil, false, s.errorf("%v: control character", errString)
		default:
			s.i++
		}
	}
	return nil, false, s.errorf("%v: unterminated", errString)
}

// strValue scans a string and returns its value.
func (s *scanner) strValue() (string, error) {
	start := s.i
	raw, esc, err := s.str()
	if err != nil || !esc {
		return string(raw), err
	}
	var v string
	if err := json.Unmarshal(s.data[start:s.i], &v); err != nil {
		return "", s.errorf("%v", err)
	}
	return v, nil
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

// scanBulkSummary reads the "errors" flag of a _bulk response and counts its
// items in one validating pass, without decoding them: when errors is false
// every item succeeded and nothing else needs reading.
func scanBulkSummary(data []byte) (failed bool, items int, err error) {
	s := scanner{data: data}
	var dummy probe
	s.ws()
	if s.i >= len(s.data) || s.data[s.i] != '{' {
		return false, 0, s.errorf("want a JSON object")
	}
	s.i++
	s.depth = 1
	s.ws()
	for s.i < len(s.data) && s.data[s.i] != '}' {
		if s.data[s.i] != '"' {
			return false, 0, s.errorf("want a key")
		}
		key, _, err := s.str()
		if err != nil {
			return false, 0, err
		}
		s.ws()
		if s.i >= len(s.data) || s.data[s.i] != ':' {
			return false, 0, s.errorf("want ':'")
		}
		s.i++
		s.ws()
		switch {
		case string(key) == "errors" && s.i < len(s.data) && s.data[s.i] == 't':
			failed = true
			err = s.literal("true")
		case string(key) == "items" && s.i < len(s.data) && s.data[s.i] == '[':
			s.i++
			s.ws()
			for s.i < len(s.data) && s.data[s.i] != ']' {
				if err = s.value(&dummy); err != nil {
					break
				}
				items++
				s.ws()
				if s.i < len(s.data) && s.data[s.i] == ',' {
					s.i++
					s.ws()
				}
			}
			if err == nil && (s.i >= len(s.data) || s.data[s.i] != ']') {
				err = s.errorf("unterminated items")
			}
			s.i++
		default:
			err = s.value(&dummy)
		}
		if err != nil {
			return false, 0, err
		}
		s.ws()
		if s.i < len(s.data) && s.data[s.i] == ',' {
			s.i++
			s.ws()
		}
	}
	if s.i >= len(s.data) {
		return false, 0, s.errorf("unterminated object")
	}
	return failed, items, nil
}
