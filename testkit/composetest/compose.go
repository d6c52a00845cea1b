package composetest

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"
)

// File is the part of a compose file these tests read.
type File struct {
	Services map[string]Service `yaml:"services"`
}

// Service is the part of a compose service these tests read.
type Service struct {
	Image       string            `yaml:"image"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	CapAdd      []string          `yaml:"cap_add"`
	Volumes     []string          `yaml:"volumes"`
	User        string            `yaml:"user"`
	PID         string            `yaml:"pid"`
	NetworkMode string            `yaml:"network_mode"`
	ReadOnly    bool              `yaml:"read_only"`
	CapDrop     []string          `yaml:"cap_drop"`
	Restart     string            `yaml:"restart"`
	Ports       []string          `yaml:"ports"`
	Container   string            `yaml:"container_name"`
	CPUs        float64           `yaml:"cpus"`
	MemLimit    string            `yaml:"mem_limit"`
	Healthcheck *struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
	DependsOn map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
}

// Load reads a compose file (YAML anchors and merge keys resolved).
func Load(path string) (File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return File{}, err
	}
	var f File
	if err := yaml.Unmarshal(b, &f); err != nil {
		return File{}, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// Root is the repository root (the directory of go.work), found from the
// test's working directory.
func Root() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.work above the working directory")
		}
		dir = parent
	}
}

// AllowList is the socket proxy's allow-list: per HTTP method, the regular
// expressions a request path must match whole (wollomatic/socket-proxy
// anchors them with ^ and $).
type AllowList map[string][]*regexp.Regexp

// Allows reports whether method and path pass.
func (a AllowList) Allows(method, path string) bool {
	for _, re := range a[method] {
		if re.MatchString(path) {
			return true
		}
	}
	return false
}

// ProxyAllowList reads the allow-list of service proxy: its -allow<METHOD>=
// arguments and SP_ALLOW_<METHOD> environment variables, merged over files in
// order as compose merges environment.
func ProxyAllowList(proxy string, files ...File) (AllowList, error) {
	a := AllowList{}
	env := map[string]string{}
	var cmd []string
	found := false
	for _, f := range files {
		s, ok := f.Services[proxy]
		if !ok {
			continue
		}
		found = true
		if s.Command != nil {
			cmd = s.Command
		}
		for k, v := range s.Environment {
			env[k] = v
		}
	}
	if !found {
		return nil, fmt.Errorf("no service %q", proxy)
	}
	add := func(method, expr string) error {
		re, err := regexp.Compile("^(?:" + expr + ")$")
		if err != nil {
			return fmt.Errorf("allow-list of %s: %w", method, err)
		}
		a[method] = append(a[method], re)
		return nil
	}
	for _, arg := range cmd {
		rest, ok := strings.CutPrefix(arg, "-allow")
		if !ok {
			continue
		}
		method, expr, ok := strings.Cut(rest, "=")
		if !ok || method != strings.ToUpper(method) {
			continue // -allowfrom, -allowhealthcheck, ...
		}
		if err := add(method, expr); err != nil {
			return nil, err
		}
	}
	for k, v := range env {
		rest, ok := strings.CutPrefix(k, "SP_ALLOW_")
		if !ok || v == "" {
			continue
		}
		method, _, _ := strings.Cut(rest, "_") // SP_ALLOW_GET_2
		if err := add(method, v); err != nil {
			return nil, err
		}
	}
	return a, nil
}
