package rules

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/whalewatch/whalewatch/pkg/flagenv"
)

const cliUsage = `usage:
  detector rules lint [flags]                  check the shipped and user rules, list them
  detector rules test [flags] file.jsonl...    run the rules over recorded telemetry or samples
  detector rules doc [flags]                   print the severity table of the enabled rules (Markdown)

A line of a .jsonl file is a telemetry event, or a sample
  {"event": {...}, "state": {"distinct_dest_ports": 40}, "expect": ["rule-id"]}
test prints every threat raised and exits 1 when a sample's expect differs.

flags:
`

// Main runs the `detector rules` subcommands and returns the exit code:
// 0 fine, 1 rules rejected or expectations failed, 2 usage.
func Main(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("detector rules", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c Config
	c.RegisterFlags(fs)
	verbose := fs.Bool("verbose", false, "test: also print samples that raised nothing")
	fs.Usage = func() {
		fmt.Fprint(stderr, cliUsage)
		fs.PrintDefaults()
	}
	if len(args) == 0 {
		fs.Usage()
		return 2
	}
	cmd := args[0]
	if err := flagenv.Parse(fs, args[1:], os.Getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	set, err := LoadConfig(c)
	if err != nil {
		fmt.Fprintf(stderr, "rules rejected:\n%v\n", err)
		return 1
	}
	switch cmd {
	case "lint":
		for _, r := range set.Rules() {
			state := "enabled"
			if !r.Enabled {
				state = "disabled"
			}
			fmt.Fprintf(stdout, "%-32s %-8s %-9s %-10s %s\n", r.ID, r.Severity, r.TechniqueID, state, r.Source)
			// Every exception is shown: what a rule does not see is part of
			// what it does (issue 9: whalewatch's own containers).
			for i := range r.Exceptions {
				fmt.Fprintf(stdout, "  except %s\n", describeException(&r.Exceptions[i]))
			}
		}
		fmt.Fprintf(stdout, "%d rules, %d enabled: OK\n", len(set.Rules()), set.Enabled())
		return 0
	case "doc":
		fmt.Fprint(stdout, SeverityTable(set))
		return 0
	case "test":
		if fs.NArg() == 0 {
			fmt.Fprintln(stderr, "rules test: no files")
			return 2
		}
		failed, samples, threats := 0, 0, 0
		for _, name := range fs.Args() {
			f, err := os.Open(name)
			if err != nil {
				fmt.Fprintln(stderr, err)
				return 1
			}
			ss, err := ReadSamples(f)
			f.Close()
			if err != nil {
				fmt.Fprintf(stderr, "%s: %v\n", name, err)
				return 1
			}
			for i := range ss {
				res := Check(set, &ss[i])
				samples++
				threats += len(res.Matches)
				for _, m := range res.Matches {
					fmt.Fprintf(stdout, "%s:%d: %s %s: %s%s\n", name, ss[i].Line, m.Rule.Severity, m.Rule.ID, m.Message, where(&ss[i]))
				}
				if len(res.Matches) == 0 && *verbose {
					fmt.Fprintf(stdout, "%s:%d: no threat\n", name, ss[i].Line)
				}
				if res.Failure != "" {
					failed++
					fmt.Fprintf(stdout, "%s:%d: FAIL: %s\n", name, ss[i].Line, res.Failure)
				}
			}
		}
		fmt.Fprintf(stdout, "%d events, %d threats, %d expectations failed\n", samples, threats, failed)
		if failed > 0 {
			return 1
		}
		return 0
	}
	fmt.Fprintf(stderr, "detector rules: unknown command %q\n", cmd)
	fs.Usage()
	return 2
}

// describeException is one line: each field given, then the comment.
func describeException(x *Exception) string {
	var parts []string
	add := func(name string, vs []string) {
		if len(vs) > 0 {
			parts = append(parts, name+"="+strconv.Quote(strings.Join(vs, "|")))
		}
	}
	keys := slices.Sorted(maps.Keys(x.Labels))
	for _, k := range keys {
		parts = append(parts, "label "+k+"="+strconv.Quote(x.Labels[k]))
	}
	add("image", x.Images)
	add("container", x.Containers)
	add("process.path", x.ProcessPaths)
	add("process.tool", x.ProcessNames)
	add("command_line", x.CommandLines)
	add("destination", x.CIDRs)
	s := strings.Join(parts, " and ")
	if x.Comment != "" {
		s += "  # " + sanitize(x.Comment)
	}
	return s
}

func where(s *Sample) string {
	var b strings.Builder
	if c := s.Event.Container; c != nil && c.Name != "" {
		fmt.Fprintf(&b, " in container %s", sanitize(c.Name))
	}
	if s.Event.Host.Name != "" {
		fmt.Fprintf(&b, " on host %s", sanitize(s.Event.Host.Name))
	}
	return b.String()
}
