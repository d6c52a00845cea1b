package rules

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"

	"go.yaml.in/yaml/v3"
)

// A rule file (YAML). Every key is optional; files are applied in order,
// the shipped files first, then the user's files by name:
//
//	lists:     # named string lists, used in conditions by name
//	  shells: [sh, bash]                 # define or replace
//	  trusted_registries: {append: [registry.example.com]}  # extend
//	macros:    # named expression fragments, used in conditions by name
//	  is_exec: whalewatch.telemetry == "process"
//	disable: [rule-id, ...]              # turn shipped rules off
//	rules:
//	  - id: my-rule                      # new rule: all fields below required
//	    ...
//	  - id: suspicious-tool-downloader   # an existing rule: override: true,
//	    override: true                   # then only the fields given change
//	    exceptions: [...]                # (exceptions are appended)
type fileSpec struct {
	Lists   map[string]yaml.Node `yaml:"lists"`
	Macros  map[string]yaml.Node `yaml:"macros"`
	Disable []yaml.Node          `yaml:"disable"`
	Rules   []ruleSpec           `yaml:"rules"`
}

type ruleSpec struct {
	Line        int         `yaml:"-"`
	ID          string      `yaml:"id"`
	Override    bool        `yaml:"override"`
	Enabled     *bool       `yaml:"enabled"`
	Name        *string     `yaml:"name"`
	Description *string     `yaml:"description"`
	Severity    *string     `yaml:"severity"`
	MITRE       *mitreSpec  `yaml:"mitre"`
	Kinds       []string    `yaml:"kinds"`
	Condition   yaml.Node   `yaml:"condition"`
	Output      yaml.Node   `yaml:"output"`
	Tags        []string    `yaml:"tags"`
	Exceptions  []Exception `yaml:"exceptions"`
}

type mitreSpec struct {
	TacticID    string `yaml:"tactic_id"`
	Tactic      string `yaml:"tactic"`
	TechniqueID string `yaml:"technique_id"`
	Technique   string `yaml:"technique"`
}

// listSpec is a list value: a sequence (define or replace) or a mapping
// {append: [...]} that extends the list defined earlier.
type listSpec struct {
	Items  []string
	Append bool
}

// Exception suppresses a rule for matching events. Within one exception
// every field given must match (and); within a field, any element may (or).
// Any matching exception suppresses the rule. Images, containers and paths
// are shell patterns (path.Match); command lines are compared exactly, so
// that an exception for one health check is not one for every use of the tool.
type Exception struct {
	Comment      string            `yaml:"comment"`
	Images       []string          `yaml:"images"`        // container.image.name, or name:tag
	Containers   []string          `yaml:"containers"`    // container.name
	Labels       map[string]string `yaml:"labels"`        // container.labels (value is a pattern)
	ProcessPaths []string          `yaml:"process_paths"` // process.path (executable or argv[0])
	ProcessNames []string          `yaml:"process_names"` // process.tool (name run as)
	CommandLines []string          `yaml:"command_lines"` // process.command_line, exactly
	CIDRs        []string          `yaml:"cidrs"`         // destination.ip
}

// FileError is a problem in a rule file, at a line (0 when unknown).
type FileError struct {
	File   string
	Line   int
	Column int
	Reason string
}

func (e *FileError) Error() string {
	switch {
	case e.Line > 0 && e.Column > 0:
		return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Line, e.Column, e.Reason)
	case e.Line > 0:
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Reason)
	}
	return fmt.Sprintf("%s: %s", e.File, e.Reason)
}

func errAt(file string, n *yaml.Node, format string, args ...any) *FileError {
	e := &FileError{File: file, Reason: fmt.Sprintf(format, args...)}
	if n != nil {
		e.Line = n.Line
	}
	return e
}

var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// parseFile decodes one rule file strictly: unknown keys are errors, so a
// misspelt `conditon` cannot silently disable a rule.
func parseFile(name string, data []byte) (*fileSpec, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var f fileSpec
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return &f, nil // empty file
		}
		return nil, yamlError(name, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, &FileError{File: name, Line: extra.Line, Reason: "more than one YAML document"}
	}
	// Lines of rule entries: decode again as nodes (cheap, load time only).
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err == nil && len(root.Content) == 1 {
		m := root.Content[0]
		for i := 0; i+1 < len(m.Content); i += 2 {
			if m.Content[i].Value == "rules" && m.Content[i+1].Kind == yaml.SequenceNode {
				for j, r := range m.Content[i+1].Content {
					if j < len(f.Rules) {
						f.Rules[j].Line = r.Line
					}
				}
			}
		}
	}
	return &f, nil
}

func yamlError(name string, err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		errs := make([]error, 0, len(te.Errors))
		for _, m := range te.Errors {
			errs = append(errs, lineError(name, m))
		}
		return errors.Join(errs...)
	}
	return lineError(name, err.Error())
}

func lineError(name, msg string) *FileError {
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &FileError{File: name, Line: line, Reason: m[2]}
	}
	return &FileError{File: name, Reason: msg}
}

func decodeList(file, name string, n *yaml.Node) (listSpec, error) {
	switch n.Kind {
	case yaml.SequenceNode:
		var items []string
		if err := n.Decode(&items); err != nil {
			return listSpec{}, errAt(file, n, "list %q: %v", name, err)
		}
		return listSpec{Items: items}, nil
	case yaml.MappingNode:
		var a struct {
			Append []string `yaml:"append"`
		}
		if len(n.Content) != 2 || n.Content[0].Value != "append" {
			return listSpec{}, errAt(file, n, "list %q: want a sequence or {append: [...]}", name)
		}
		if err := n.Decode(&a); err != nil {
			return listSpec{}, errAt(file, n, "list %q: %v", name, err)
		}
		return listSpec{Items: a.Append, Append: true}, nil
	}
	return listSpec{}, errAt(file, n, "list %q: want a sequence of strings or {append: [...]}", name)
}
