// Package subject is the NATS subject layout of whalewatch, the other half of
// the wire contract beside package event.
//
//	whalewatch.telemetry.<host>.<container-id>.<telemetry>   telemetry (stream TELEMETRY)
//	whalewatch.threats.<severity>.<rule-id>                   threats (stream THREATS)
//	whalewatch.actions.request.<host>.<container-id>          response requests (stream ACTIONS)
//	whalewatch.actions.result.<host>.<container-id>           response results (stream ACTIONS)
//	whalewatch.deadletter.<consumer>                          messages a consumer gave up on (stream DEADLETTER)
//
// The host comes first in telemetry and action subjects so that one NATS
// cluster serves many Docker hosts: a collector consumes only
// whalewatch.actions.request.<its-host>.>, and an operator can subscribe to one
// host's telemetry. The container id comes next so that the detector can
// partition telemetry by container (all of one container's telemetry at one
// replica). Telemetry that belongs to the host rather than a container (image
// events, Docker API exposure) uses HostScope as the container token.
//
// Every token is passed through Token, so a hostname with dots or a rule id
// with a wildcard cannot change which subjects a message lands on.
package subject

import (
	"fmt"
	"strings"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// Root is the first token of every whalewatch subject.
const Root = "whalewatch"

// Subject prefixes and wildcards.
const (
	TelemetryPrefix  = Root + ".telemetry"
	ThreatsPrefix    = Root + ".threats"
	ActionsPrefix    = Root + ".actions"
	DeadLetterPrefix = Root + ".deadletter"

	AllTelemetry   = TelemetryPrefix + ".>"
	AllThreats     = ThreatsPrefix + ".>"
	AllActions     = ActionsPrefix + ".>"
	AllDeadLetters = DeadLetterPrefix + ".>"
	AllRequests    = ActionsPrefix + ".request.>"
	AllResults     = ActionsPrefix + ".result.>"
)

// HostScope is the container token of telemetry about the host itself.
const HostScope = "_host"

// MaxToken bounds a token; longer ones are cut.
const MaxToken = 128

// Token makes s safe as one subject token: characters NATS gives a meaning to
// ('.', '*', '>', whitespace) and control characters become '_'; an empty
// string becomes "_".
func Token(s string) string {
	if s == "" {
		return "_"
	}
	var b strings.Builder
	for _, r := range s {
		if b.Len() >= MaxToken {
			break
		}
		switch {
		case r == '.' || r == '*' || r == '>' || r <= ' ' || r == 0x7f:
			b.WriteByte('_')
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// Telemetry is the subject of a telemetry document.
func Telemetry(host, containerID string, kind event.Telemetry) string {
	return TelemetryPrefix + "." + Token(host) + "." + Token(containerID) + "." + Token(string(kind))
}

// HostTelemetry is the subject for telemetry about the host itself.
func HostTelemetry(host string, kind event.Telemetry) string {
	return Telemetry(host, HostScope, kind)
}

// ForTelemetry is the subject e is published on.
func ForTelemetry(e *event.Event) string {
	cid := HostScope
	if e.Container != nil && e.Container.ID != "" {
		cid = e.Container.ID
	}
	return Telemetry(e.Host.Name, cid, e.Whalewatch.Telemetry)
}

// Threat is the subject of a threat.
func Threat(sev event.Severity, ruleID string) string {
	return ThreatsPrefix + "." + Token(string(sev)) + "." + Token(ruleID)
}

// ForThreat is the subject threat e is published on.
func ForThreat(e *event.Event) string {
	id := ""
	if e.Rule != nil {
		id = e.Rule.ID
	}
	return Threat(e.Whalewatch.Severity, id)
}

// ThreatsAtLeast returns the subject filters that match threats of severity
// min or above, e.g. for a notifier that only pages on high and critical.
func ThreatsAtLeast(min event.Severity) []string {
	var out []string
	for _, s := range event.Severities {
		if s.Score() >= min.Score() {
			out = append(out, ThreatsPrefix+"."+string(s)+".>")
		}
	}
	return out
}

// ActionRequest is the subject of a response request for a container.
func ActionRequest(host, containerID string) string {
	return ActionsPrefix + ".request." + Token(host) + "." + Token(containerID)
}

// ActionRequestsFor matches every request for one host's containers.
func ActionRequestsFor(host string) string {
	return ActionsPrefix + ".request." + Token(host) + ".>"
}

// ActionResult is the subject of a response result.
func ActionResult(host, containerID string) string {
	return ActionsPrefix + ".result." + Token(host) + "." + Token(containerID)
}

// DeadLetter is the subject where consumer gives up on a message.
func DeadLetter(consumer string) string {
	return DeadLetterPrefix + "." + Token(consumer)
}

// TelemetrySubject is a parsed telemetry subject.
type TelemetrySubject struct {
	Host        string
	ContainerID string
	Kind        event.Telemetry
}

// ParseTelemetry splits a telemetry subject into its tokens.
func ParseTelemetry(s string) (TelemetrySubject, error) {
	parts := strings.Split(s, ".")
	if len(parts) != 5 || parts[0] != Root || parts[1] != "telemetry" {
		return TelemetrySubject{}, fmt.Errorf("not a telemetry subject: %q", event.Truncate(s, 256))
	}
	k := event.Telemetry(parts[4])
	if !k.Valid() {
		return TelemetrySubject{}, fmt.Errorf("unknown telemetry kind %q in subject", event.Truncate(parts[4], 64))
	}
	return TelemetrySubject{Host: parts[2], ContainerID: parts[3], Kind: k}, nil
}
