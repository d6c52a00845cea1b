package rules

import (
	"fmt"
	"net/netip"
	"path"
	"reflect"
	"slices"
	"strings"

	"github.com/expr-lang/expr"
)

// function is a helper callable from conditions. Arguments arrive checked
// against sig by the compiler, except that a list argument may be a literal
// ([]any) as well as a named list or an event field ([]string).
type function struct {
	name string
	doc  string
	sig  any
	fn   func(args ...any) (any, error)
}

// functions are the helpers conditions may call, on top of expr's builtins.
// They never allocate on the hot path and never fail: bad input (an invalid
// IP, pattern or CIDR) is simply no match.
var functions = []function{
	{"basename", "basename(path) string: last element of a slash-separated path", new(func(string) string),
		func(a ...any) (any, error) { return basename(a[0].(string)), nil }},
	{"dirname", "dirname(path) string: all but the last element of a path", new(func(string) string),
		func(a ...any) (any, error) { return path.Dir(a[0].(string)), nil }},
	{"glob", "glob(s, pattern) bool: shell pattern match (path.Match: *, ?, [a-z])", new(func(string, string) bool),
		func(a ...any) (any, error) { return glob(a[0].(string), a[1].(string)), nil }},
	{"glob_any", "glob_any(s, patterns) bool: s matches one of the patterns", new(func(string, []string) bool),
		func(a ...any) (any, error) {
			s := a[0].(string)
			return anyOf(a[1], func(p string) bool { return glob(s, p) }), nil
		}},
	{"in_list", "in_list(s, list) bool: s equals an element of list (same as `s in list`)", new(func(string, []string) bool),
		func(a ...any) (any, error) {
			s := a[0].(string)
			return anyOf(a[1], func(x string) bool { return x == s }), nil
		}},
	{"startswith_any", "startswith_any(s, prefixes) bool: s starts with one of the prefixes", new(func(string, []string) bool),
		func(a ...any) (any, error) {
			s := a[0].(string)
			return anyOf(a[1], func(p string) bool { return strings.HasPrefix(s, p) }), nil
		}},
	{"endswith_any", "endswith_any(s, suffixes) bool: s ends with one of the suffixes", new(func(string, []string) bool),
		func(a ...any) (any, error) {
			s := a[0].(string)
			return anyOf(a[1], func(p string) bool { return strings.HasSuffix(s, p) }), nil
		}},
	{"contains_any", "contains_any(s, substrings) bool: s contains one of the substrings", new(func(string, []string) bool),
		func(a ...any) (any, error) {
			s := a[0].(string)
			return anyOf(a[1], func(p string) bool { return strings.Contains(s, p) }), nil
		}},
	{"icontains_any", "icontains_any(s, substrings) bool: case-insensitive contains_any", new(func(string, []string) bool),
		func(a ...any) (any, error) {
			s := lower(a[0].(string))
			return anyOf(a[1], func(p string) bool { return strings.Contains(s, lower(p)) }), nil
		}},
	{"lines_contain_any", "lines_contain_any(lines, substrings) bool: some line contains some substring", new(func([]string, []string) bool),
		func(a ...any) (any, error) {
			return anyOf(a[0], func(l string) bool {
				return anyOf(a[1], func(p string) bool { return strings.Contains(l, p) })
			}), nil
		}},
	{"lines_icontain_any", "lines_icontain_any(lines, substrings) bool: case-insensitive lines_contain_any", new(func([]string, []string) bool),
		func(a ...any) (any, error) {
			return anyOf(a[0], func(l string) bool {
				l = lower(l)
				return anyOf(a[1], func(p string) bool { return strings.Contains(l, lower(p)) })
			}), nil
		}},
	{"has_flag", "has_flag(args, flag) bool: args hold the flag, also inside a group of short flags (-lvp has -l) or as --flag=value", new(func([]string, string) bool),
		func(a ...any) (any, error) {
			f := a[1].(string)
			return anyOf(a[0], func(arg string) bool { return hasFlag(arg, f) }), nil
		}},
	{"in_cidr", "in_cidr(ip, cidr) bool: ip is in the network (10.0.0.0/8); false for an invalid ip or cidr", new(func(string, string) bool),
		func(a ...any) (any, error) { return inCIDR(a[0].(string), a[1].(string)), nil }},
	{"in_cidrs", "in_cidrs(ip, cidrs) bool: ip is in one of the networks", new(func(string, []string) bool),
		func(a ...any) (any, error) {
			ip := a[0].(string)
			return anyOf(a[1], func(c string) bool { return inCIDR(ip, c) }), nil
		}},
	{"is_loopback", "is_loopback(ip) bool: 127.0.0.0/8 or ::1", new(func(string) bool),
		func(a ...any) (any, error) { return ipIs(a[0].(string), netip.Addr.IsLoopback), nil }},
	{"is_private", "is_private(ip) bool: RFC 1918, RFC 4193, link-local or loopback", new(func(string) bool),
		func(a ...any) (any, error) { return ipIs(a[0].(string), isPrivate), nil }},
	{"is_public", "is_public(ip) bool: a valid unicast address that is not private, loopback, link-local or unspecified", new(func(string) bool),
		func(a ...any) (any, error) {
			return ipIs(a[0].(string), func(ip netip.Addr) bool {
				return ip.IsGlobalUnicast() && !isPrivate(ip)
			}), nil
		}},
}

func exprFunctions() []expr.Option {
	opts := make([]expr.Option, 0, len(functions))
	for _, f := range functions {
		opts = append(opts, expr.Function(f.name, f.fn, overloads(f.sig)...))
	}
	return opts
}

// overloads returns sig and, for each []string parameter, the variants that
// take []any instead, so a literal list (["a", "b"]) type-checks as well as
// a named list or an event field.
func overloads(sig any) []any {
	t := reflect.TypeOf(sig).Elem()
	variants := [][]reflect.Type{nil}
	for i := 0; i < t.NumIn(); i++ {
		in := t.In(i)
		var next [][]reflect.Type
		for _, v := range variants {
			next = append(next, append(slices.Clone(v), in))
			if in == reflect.TypeOf([]string(nil)) {
				next = append(next, append(slices.Clone(v), reflect.TypeOf([]any(nil))))
			}
		}
		variants = next
	}
	out := make([]any, 0, len(variants))
	for _, ins := range variants {
		ft := reflect.FuncOf(ins, []reflect.Type{t.Out(0)}, false)
		out = append(out, reflect.New(ft).Interface())
	}
	return out
}

// anyOf reports whether f holds for an element of list, a []string or a
// literal []any of strings.
func anyOf(list any, f func(string) bool) bool {
	switch l := list.(type) {
	case []string:
		for _, s := range l {
			if f(s) {
				return true
			}
		}
	case []any:
		for _, v := range l {
			if s, ok := v.(string); ok && f(s) {
				return true
			}
		}
	}
	return false
}

func glob(s, pattern string) bool {
	ok, err := path.Match(pattern, s)
	return err == nil && ok
}

func hasFlag(arg, flag string) bool {
	if arg == flag {
		return true
	}
	if strings.HasPrefix(flag, "--") {
		return strings.HasPrefix(arg, flag) && len(arg) > len(flag) && arg[len(flag)] == '='
	}
	// -lvp holds -l, -v and -p; -e/bin/sh holds -e with its value attached.
	if len(flag) == 2 && flag[0] == '-' && len(arg) > 2 && arg[0] == '-' && arg[1] != '-' {
		for i := 1; i < len(arg); i++ {
			c := arg[i]
			if c == flag[1] {
				return true
			}
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
				return false
			}
		}
	}
	return false
}

func inCIDR(ip, cidr string) bool {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return false
	}
	return p.Contains(a.Unmap())
}

func ipIs(ip string, f func(netip.Addr) bool) bool {
	a, err := netip.ParseAddr(ip)
	return err == nil && f(a.Unmap())
}

func isPrivate(ip netip.Addr) bool {
	return ip.IsPrivate() || ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsUnspecified()
}

// FunctionDocs lists the helper functions for documentation.
func FunctionDocs() []string {
	out := make([]string, len(functions))
	for i, f := range functions {
		sig, desc, _ := strings.Cut(f.doc, ": ")
		out[i] = fmt.Sprintf("`%s`: %s", sig, desc)
	}
	return out
}
