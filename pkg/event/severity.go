package event

import "fmt"

// Severity is a threat's severity label. It is also a token of threat
// subjects: whalewatch.threats.<severity>.<rule-id>.
type Severity string

const (
	SeverityLow      Severity = "low"
	SeverityMedium   Severity = "medium"
	SeverityHigh     Severity = "high"
	SeverityCritical Severity = "critical"
)

// Severities lists the labels from least to most severe.
var Severities = []Severity{SeverityLow, SeverityMedium, SeverityHigh, SeverityCritical}

// Score is the numeric ECS event.severity of a label. The values are those of
// Elastic's detection rules (21, 47, 73, 99), so whalewatch threats sort and
// filter beside Elastic Security's own alerts.
func (s Severity) Score() int {
	switch s {
	case SeverityLow:
		return 21
	case SeverityMedium:
		return 47
	case SeverityHigh:
		return 73
	case SeverityCritical:
		return 99
	}
	return 0
}

// Valid reports whether s is one of the four labels.
func (s Severity) Valid() bool { return s.Score() != 0 }

// ParseSeverity parses a label.
func ParseSeverity(s string) (Severity, error) {
	if sev := Severity(s); sev.Valid() {
		return sev, nil
	}
	return "", fmt.Errorf("unknown severity %q: want one of low, medium, high, critical", s)
}
