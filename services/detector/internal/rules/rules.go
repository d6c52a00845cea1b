// Package rules is the detector's first rule set: suspicious tools executed in
// a container. Later rule sets (YAML + an expression language) plug in behind
// the same Engine interface.
package rules

import (
	"path"
	"strings"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// Rule is a detection rule and the ATT&CK context of what it finds.
type Rule struct {
	ID          string
	Name        string
	Description string
	Severity    event.Severity
	TacticID    string
	Tactic      string
	TechniqueID string
	Technique   string
}

// Match is one rule that an event triggered, with the message to show.
type Match struct {
	Rule    *Rule
	Message string
}

// Tool rules, by the executable names they catch. The severity reflects what
// the tool is for: a listener or reverse shell (netcat) and a port scanner are
// high; a downloader is medium because images legitimately use curl in health
// checks, but an attacker's next stage arrives the same way.
var (
	Netcat = &Rule{
		ID: "suspicious-tool-netcat", Name: "Netcat executed in a container",
		Description: "nc, ncat or netcat ran in a container. Attackers use it for bind and reverse shells and to move data out.",
		Severity:    event.SeverityHigh,
		TacticID:    "TA0011", Tactic: "Command and Control",
		TechniqueID: "T1095", Technique: "Non-Application Layer Protocol",
	}
	Downloader = &Rule{
		ID: "suspicious-tool-downloader", Name: "Download tool executed in a container",
		Description: "wget or curl ran in a container. Attackers fetch their next stage, miners and tools this way.",
		Severity:    event.SeverityMedium,
		TacticID:    "TA0011", Tactic: "Command and Control",
		TechniqueID: "T1105", Technique: "Ingress Tool Transfer",
	}
	Scanner = &Rule{
		ID: "suspicious-tool-scanner", Name: "Network scanner executed in a container",
		Description: "nmap or masscan ran in a container: discovery of services to attack next.",
		Severity:    event.SeverityHigh,
		TacticID:    "TA0007", Tactic: "Discovery",
		TechniqueID: "T1046", Technique: "Network Service Discovery",
	}
)

var toolRules = map[string]*Rule{
	"nc": Netcat, "ncat": Netcat, "netcat": Netcat,
	"wget": Downloader, "curl": Downloader,
	"nmap": Scanner, "masscan": Scanner,
}

// All is every rule of this set.
var All = []*Rule{Netcat, Downloader, Scanner}

// Engine evaluates rules against telemetry.
type Engine struct{}

// Evaluate returns the rules e triggers. It reads process telemetry and the
// exec_start lifecycle events that carry the exec's command.
func (Engine) Evaluate(e *event.Event) []Match {
	if e.Process == nil || !isExec(e) {
		return nil
	}
	name := ToolName(e.Process)
	r, ok := toolRules[name]
	if !ok {
		return nil
	}
	return []Match{{Rule: r, Message: name + " executed"}}
}

func isExec(e *event.Event) bool {
	switch e.Whalewatch.Telemetry {
	case event.TelemetryProcess:
		return true
	case event.TelemetryLifecycle:
		return e.Event.Action == "exec_start"
	}
	return false
}

// ToolName is the name a process was run as: the base name of its
// executable, else of its first argument, else process.name. BusyBox applets
// run as /bin/busybox with argv[0] "nc", so argv[0] is checked too.
func ToolName(p *event.Process) string {
	var candidates []string
	if len(p.Args) > 0 {
		candidates = append(candidates, p.Args[0])
		if path.Base(p.Args[0]) == "busybox" && len(p.Args) > 1 {
			candidates = append(candidates, p.Args[1]) // busybox nc -l ...
		}
	}
	candidates = append(candidates, p.Name, p.Executable)
	for _, c := range candidates {
		b := strings.ToLower(path.Base(c))
		if _, ok := toolRules[b]; ok {
			return b
		}
	}
	if p.Name != "" {
		return strings.ToLower(p.Name)
	}
	return ""
}
