package event

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// MaxDocument is the largest encoded document a consumer accepts.
const MaxDocument = 1 << 20

// ErrInvalid wraps every reason Decode or Validate rejects a document. Such a
// document can never be processed: consumers dead-letter it instead of retrying.
var ErrInvalid = errors.New("invalid event")

// Marshal encodes e as JSON.
func Marshal(e *Event) ([]byte, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("encoding event %s: %w", e.Event.ID, err)
	}
	return b, nil
}

// Decode parses and validates one document.
func Decode(data []byte) (*Event, error) {
	if len(data) > MaxDocument {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrInvalid, len(data), MaxDocument)
	}
	var e Event
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&e); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := e.Validate(); err != nil {
		return nil, err
	}
	return &e, nil
}

// Validate checks the fields every consumer relies on. It does not modify e.
func (e *Event) Validate() error {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	if v := e.Whalewatch.SchemaVersion; v != SchemaMajor && !strings.HasPrefix(v, SchemaMajor+".") {
		bad("whalewatch.schema_version %q: this build reads %s.x", Truncate(v, 32), SchemaMajor)
	}
	if e.Event.ID == "" || len(e.Event.ID) > MaxName {
		bad("event.id missing or longer than %d", MaxName)
	}
	if e.Timestamp.IsZero() {
		bad("@timestamp missing")
	}
	if e.Host.Name == "" {
		bad("host.name missing")
	}
	switch e.Event.Kind {
	case KindEvent:
		if e.Whalewatch.Telemetry != "" && !e.Whalewatch.Telemetry.Valid() {
			bad("whalewatch.telemetry %q unknown", Truncate(string(e.Whalewatch.Telemetry), 32))
		}
	case KindAlert:
		if e.Rule == nil || e.Rule.ID == "" {
			bad("alert without rule.id")
		}
		if !e.Whalewatch.Severity.Valid() {
			bad("alert severity %q unknown", Truncate(string(e.Whalewatch.Severity), 32))
		}
	default:
		bad("event.kind %q: want event or alert", Truncate(string(e.Event.Kind), 32))
	}
	if e.exceedsBounds() {
		bad("a field exceeds its length limit")
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s", ErrInvalid, strings.Join(problems, "; "))
	}
	return nil
}
