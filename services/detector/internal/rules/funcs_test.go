package rules

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
)

func TestHasFlag(t *testing.T) {
	t.Parallel()
	tests := []struct {
		arg, flag string
		want      bool
	}{
		{"-e", "-e", true},
		{"-lvp", "-l", true},
		{"-lvp", "-p", true},
		{"-e/bin/sh", "-e", true},
		{"-lvp", "-e", false},
		{"--exec", "-e", false},
		{"--exec=/bin/sh", "--exec", true},
		{"--execute", "--exec", false},
		{"4444", "-e", false},
		{"-p4e", "-e", false}, // digits end the flag group: 4e is p's value
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, hasFlag(tt.arg, tt.flag), "%s %s", tt.arg, tt.flag)
	}
}

func TestRegistry(t *testing.T) {
	t.Parallel()
	for name, want := range map[string]string{
		"nginx":                           "docker.io",
		"library/nginx":                   "docker.io",
		"ghcr.io/acme/api":                "ghcr.io",
		"localhost/x":                     "localhost",
		"registry.example.com:5000/a/b":   "registry.example.com:5000",
		"sha256:0123":                     "",
		"":                                "",
		"whalewatch-test/busybox":         "docker.io",
		"Registry.Example.COM/app":        "registry.example.com",
		"123456789.dkr.ecr.aws.com/x/y/z": "123456789.dkr.ecr.aws.com",
	} {
		require.Equal(t, want, Registry(name), name)
	}
}

func TestToolName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		p    event.Process
		want string
	}{
		{event.Process{Args: []string{"/usr/bin/ncat", "-l"}}, "ncat"},
		{event.Process{Args: []string{"busybox", "nc", "-l"}}, "nc"},
		{event.Process{Args: []string{"/bin/busybox"}}, "busybox"},
		{event.Process{Name: "NETCAT"}, "netcat"},
		{event.Process{Executable: "/opt/masscan"}, "masscan"},
		{event.Process{}, ""},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, ToolName(&tt.p), "%+v", tt.p)
	}
}

func TestIPFunctions(t *testing.T) {
	t.Parallel()
	require.True(t, inCIDR("10.1.2.3", "10.0.0.0/8"))
	require.True(t, inCIDR("::ffff:10.1.2.3", "10.0.0.0/8"), "mapped IPv4")
	require.False(t, inCIDR("11.1.2.3", "10.0.0.0/8"))
	require.False(t, inCIDR("bogus", "10.0.0.0/8"))
	require.False(t, inCIDR("10.1.2.3", "bogus"))
	require.True(t, ipIs("127.0.0.2", isPrivate))
	require.True(t, ipIs("fd00::1", isPrivate))
	require.False(t, ipIs("93.184.216.34", isPrivate))
	require.False(t, ipIs("", isPrivate))
}

// TestFunctionsInConditions compiles and runs each helper in a condition.
func TestFunctionsInConditions(t *testing.T) {
	t.Parallel()
	c := &compiler{lists: map[string]*namedList{"l": {items: []string{"/tmp/", "x"}}}, macros: map[string]*namedMacro{}}
	e := &event.Event{
		Process:     &event.Process{Args: []string{"/tmp/a", "-lvp"}, CommandLine: "/tmp/a -lvp"},
		Destination: &event.Endpoint{IP: "10.0.0.1"},
		Whalewatch:  event.Whalewatch{Log: &event.LogBatch{Lines: []string{"ok", "Nmap Scan Report"}}},
	}
	var env Env
	newEnv(&env, e, nil)
	for cond, want := range map[string]bool{
		`basename(process.path) == "a"`:                           true,
		`dirname(process.path) == "/tmp"`:                         true,
		`glob(process.path, "/tmp/*")`:                            true,
		`glob_any(process.path, ["/var/*", "/tmp/?"])`:            true,
		`in_list("x", l)`:                                         true,
		`"x" in l`:                                                true,
		`"y" in l`:                                                false,
		`startswith_any(process.path, l)`:                         true,
		`endswith_any(process.command_line, ["-lvp"])`:            true,
		`contains_any(process.command_line, ["zz", "a -l"])`:      true,
		`icontains_any("ABC", ["b"])`:                             true,
		`lines_contain_any(whalewatch.log.lines, ["Nmap Scan"])`:  true,
		`lines_icontain_any(whalewatch.log.lines, ["nmap scan"])`: true,
		`has_flag(process.args, "-l")`:                            true,
		`in_cidr(destination.ip, "10.0.0.0/8")`:                   true,
		`in_cidrs(destination.ip, ["192.168.0.0/16"])`:            false,
		`is_loopback(destination.ip)`:                             false,
		`is_private(destination.ip)`:                              true,
		`is_public(destination.ip)`:                               false,
		`is_public("93.184.216.34")`:                              true,
	} {
		p, err := c.compile(cond, true)
		require.NoError(t, err, cond)
		var r runner
		got, err := r.vm.Run(p, env)
		require.NoError(t, err, cond)
		require.Equal(t, want, got, cond)
	}
}
