package event

import (
	"maps"
	"slices"
	"strings"
	"unicode/utf8"
)

// Limits bound everything an attacker inside a container controls: process
// names, command lines, arguments, paths, labels, log lines. A document that
// passes through Bound is at most a few hundred KiB whatever the container did.
const (
	MaxName        = 256      // names, ids, images, users, actions
	MaxPath        = 4096     // executables, file paths, working directories (PATH_MAX)
	MaxCommandLine = 8192     // process.command_line
	MaxArg         = 1024     // one element of process.args
	MaxArgs        = 64       // elements kept of process.args; args_count keeps the true count
	MaxLabels      = 64       // container labels kept
	MaxLabelValue  = 1024     // one label value
	MaxMessage     = 16 << 10 // message
	MaxListItems   = 256      // tags, mounts, ports, capabilities, ...
	MaxLogLine     = 4096     // one log line
	MaxLogLines    = 256      // lines in one log batch
	MaxAncestry    = 16       // ancestors kept in whalewatch.ancestry
	MaxEvidence    = 32       // items of each whalewatch.evidence list
	MaxSyscallArgs = 8        // whalewatch.syscall.args kept
)

// Ellipsis marks a value that Bound shortened.
const Ellipsis = "…"

// Truncate returns s cut to at most max bytes, on a rune boundary, with
// Ellipsis appended when it was cut. Invalid UTF-8 is replaced by U+FFFD so
// that every consumer (JSON, Elasticsearch, Slack) sees valid text.
func Truncate(s string, max int) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if len(s) <= max {
		return s
	}
	cut := max - len(Ellipsis)
	if cut < 0 {
		cut = 0
	}
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + Ellipsis
}

// Bound shortens every attacker-controlled field of e to the limits above, in
// place, and reports whether anything was cut. Publishers call it before
// publishing; consumers may rely on it having been called, and Validate checks
// the bounds again so that a hostile publisher cannot bypass them.
func (e *Event) Bound() (cut bool) { return e.bound(false) }

// exceedsBounds reports whether Bound would change e, without changing it.
func (e *Event) exceedsBounds() bool { return e.bound(true) }

func (e *Event) bound(dry bool) bool {
	b := bounder{dry: dry}
	e.Message = b.s(e.Message, MaxMessage)
	e.Tags = b.list(e.Tags, MaxName)
	e.Event.Action = b.s(e.Event.Action, MaxName)
	e.Event.Reason = b.s(e.Event.Reason, MaxMessage)
	e.Host.Name = b.s(e.Host.Name, MaxName)
	if c := e.Container; c != nil {
		c.ID = b.s(c.ID, MaxName)
		c.Name = b.s(c.Name, MaxName)
		c.Image.Name = b.s(c.Image.Name, MaxName)
		c.Image.Tag = b.list(c.Image.Tag, MaxName)
		if c.Image.Hash != nil {
			c.Image.Hash.All = b.list(c.Image.Hash.All, MaxName)
		}
		c.Labels = b.labels(c.Labels)
	}
	if p := e.Process; p != nil {
		p.Name = b.s(p.Name, MaxName)
		p.Executable = b.s(p.Executable, MaxPath)
		p.CommandLine = b.s(p.CommandLine, MaxCommandLine)
		p.WorkingDirectory = b.s(p.WorkingDirectory, MaxPath)
		if p.ArgsCount < len(p.Args) && !dry {
			p.ArgsCount = len(p.Args)
		}
		p.Args = b.listN(p.Args, MaxArgs, MaxArg)
		if p.Parent != nil {
			p.Parent.Name = b.s(p.Parent.Name, MaxName)
			p.Parent.Executable = b.s(p.Parent.Executable, MaxPath)
		}
		if p.User != nil {
			p.User.ID = b.s(p.User.ID, MaxName)
			p.User.Name = b.s(p.User.Name, MaxName)
		}
	}
	if p := e.Process; p != nil && p.Hash != nil {
		p.Hash.SHA256 = b.s(p.Hash.SHA256, MaxName)
	}
	if f := e.File; f != nil {
		f.Path = b.s(f.Path, MaxPath)
		f.TargetPath = b.s(f.TargetPath, MaxPath)
	}
	if fc := e.Whalewatch.FileChange; fc != nil {
		fc.Operation = b.s(fc.Operation, MaxName)
		fc.Mode = b.s(fc.Mode, MaxName)
	}
	if sc := e.Whalewatch.Syscall; sc != nil {
		sc.Name = b.s(sc.Name, MaxName)
		sc.Errno = b.s(sc.Errno, MaxName)
		sc.Args = b.listN(sc.Args, MaxSyscallArgs, MaxPath)
	}
	e.Whalewatch.Ancestry = capListN(&b, e.Whalewatch.Ancestry, MaxAncestry)
	for i := range e.Whalewatch.Ancestry {
		a := &e.Whalewatch.Ancestry[i]
		a.Name = b.s(a.Name, MaxName)
		a.Executable = b.s(a.Executable, MaxPath)
		a.CommandLine = b.s(a.CommandLine, MaxCommandLine)
	}
	if ev := e.Whalewatch.Evidence; ev != nil {
		ev.LogLines = b.listN(ev.LogLines, MaxEvidence, MaxLogLine)
		ev.FileChanges = b.listN(ev.FileChanges, MaxEvidence, MaxPath)
		ev.Connections = b.listN(ev.Connections, MaxEvidence, MaxName)
		ev.Processes = b.listN(ev.Processes, MaxEvidence, MaxCommandLine)
	}
	if in := e.Whalewatch.Incident; in != nil {
		in.ID = b.s(in.ID, MaxName)
		in.Rules = b.listN(in.Rules, MaxEvidence, MaxName)
	}
	if c := e.Whalewatch.Config; c != nil {
		c.User = b.s(c.User, MaxName)
		c.CapAdd = b.list(c.CapAdd, MaxName)
		c.SecurityOpt = b.list(c.SecurityOpt, MaxName)
		c.Entrypoint = b.list(c.Entrypoint, MaxArg)
		c.Cmd = b.list(c.Cmd, MaxArg)
		c.Healthcheck = b.list(c.Healthcheck, MaxArg)
		c.Mounts = capList(&b, c.Mounts)
		for i := range c.Mounts {
			c.Mounts[i].Source = b.s(c.Mounts[i].Source, MaxPath)
			c.Mounts[i].Destination = b.s(c.Mounts[i].Destination, MaxPath)
		}
		c.PublishedPorts = capList(&b, c.PublishedPorts)
		c.Devices = capList(&b, c.Devices)
		for i := range c.Devices {
			c.Devices[i].PathOnHost = b.s(c.Devices[i].PathOnHost, MaxPath)
			c.Devices[i].PathInContainer = b.s(c.Devices[i].PathInContainer, MaxPath)
		}
	}
	if l := e.Whalewatch.Log; l != nil {
		l.Lines = b.listN(l.Lines, MaxLogLines, MaxLogLine)
	}
	if r := e.Whalewatch.Response; r != nil {
		r.Reason = b.s(r.Reason, MaxMessage)
	}
	return b.cut
}

// bounder shortens values and records whether it did; in dry mode it only records.
type bounder struct{ cut, dry bool }

func (b *bounder) s(s string, max int) string {
	t := Truncate(s, max)
	if t == s {
		return s
	}
	b.cut = true
	if b.dry {
		return s
	}
	return t
}

func (b *bounder) list(ss []string, maxEach int) []string { return b.listN(ss, MaxListItems, maxEach) }

func (b *bounder) listN(ss []string, maxItems, maxEach int) []string {
	ss = capListN(b, ss, maxItems)
	for i := range ss {
		ss[i] = b.s(ss[i], maxEach)
	}
	return ss
}

func capList[T any](b *bounder, xs []T) []T { return capListN(b, xs, MaxListItems) }

func capListN[T any](b *bounder, xs []T, max int) []T {
	if len(xs) <= max {
		return xs
	}
	b.cut = true
	if b.dry {
		return xs
	}
	return xs[:max]
}

func (b *bounder) labels(m map[string]string) map[string]string {
	if len(m) == 0 {
		return m
	}
	keys := slices.Sorted(maps.Keys(m)) // keep the same labels every time
	keys = capListN(b, keys, MaxLabels)
	if b.dry {
		for _, k := range keys {
			b.s(k, MaxName)
			b.s(m[k], MaxLabelValue)
		}
		return m
	}
	out := make(map[string]string, len(keys))
	for _, k := range keys {
		out[b.s(k, MaxName)] = b.s(m[k], MaxLabelValue)
	}
	return out
}
