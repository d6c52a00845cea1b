// Package dockertest drives the real Docker engine from tests through the
// docker CLI: it builds the busybox test image FROM scratch (no image can be
// pulled here) and runs containers that are removed when the test ends.
//
// Containers run with --network none unless a test asks otherwise, and carry
// the label LabelTest so that anything a crashed test left behind can be found.
package dockertest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Image is the busybox test image's reference.
const Image = "whalewatch-test/busybox:1"

// LabelTest marks every container a test creates.
const LabelTest = "whalewatch.test"

// RequireEnv, when set to 1 (make test sets it), turns "no Docker engine" from
// a skip into a failure, so CI cannot pass by skipping.
const RequireEnv = "WHALEWATCH_REQUIRE_DOCKER"

// Available skips (or, under RequireEnv, fails) the test when no Docker
// engine answers.
func Available(tb testing.TB) {
	tb.Helper()
	if err := exec.Command("docker", "info").Run(); err != nil {
		if os.Getenv(RequireEnv) == "1" {
			tb.Fatalf("no Docker engine answers (docker info: %v) and %s=1", err, RequireEnv)
		}
		tb.Skipf("no Docker engine answers (docker info: %v); set %s=1 to fail instead", err, RequireEnv)
	}
}

// Docker runs the docker CLI and returns its trimmed stdout, failing the test
// on error.
func Docker(tb testing.TB, args ...string) string {
	tb.Helper()
	out, err := Try(args...)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	return out
}

// Try runs the docker CLI and returns its trimmed stdout or an error that
// includes stderr.
func Try(args ...string) (string, error) {
	cmd := exec.Command("docker", args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

var (
	buildOnce sync.Once
	buildErr  error
)

// BusyboxImage builds Image once per test binary: FROM scratch, with the
// host's static busybox as /bin/busybox and a symlink for each applet (sh,
// nc, wget, httpd, sleep, ...). It needs Debian's busybox-static.
func BusyboxImage(tb testing.TB) string {
	tb.Helper()
	Available(tb)
	buildOnce.Do(func() { buildErr = buildBusybox() })
	if buildErr != nil {
		tb.Fatalf("building %s: %v", Image, buildErr)
	}
	return Image
}

func buildBusybox() error {
	if _, err := Try("image", "inspect", Image); err == nil {
		return nil
	}
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return fmt.Errorf("busybox not found (apt-get install busybox-static): %w", err)
	}
	if out, _ := exec.Command("file", "-L", bb).Output(); len(out) > 0 && !bytes.Contains(out, []byte("statically linked")) {
		return fmt.Errorf("%s is not statically linked (apt-get install busybox-static)", bb)
	}
	dir, err := os.MkdirTemp("", "whalewatch-busybox-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	for _, d := range []string{"bin", "tmp", "etc", "root"} {
		if err := os.MkdirAll(filepath.Join(dir, "rootfs", d), 0o755); err != nil {
			return err
		}
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "rootfs", "bin", "busybox"), data, 0o755); err != nil {
		return err
	}
	list, err := exec.Command(bb, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	for _, applet := range strings.Fields(string(list)) {
		if applet == "busybox" || strings.Contains(applet, "/") {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(dir, "rootfs", "bin", applet)); err != nil {
			return err
		}
	}
	files := map[string]string{
		"rootfs/etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
		"rootfs/etc/group":  "root:x:0:\nnobody:x:65534:\n",
		"Dockerfile":        "FROM scratch\nCOPY rootfs/ /\nENV PATH=/bin\nCMD [\"/bin/sh\"]\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	if out, err := exec.Command("docker", "build", "--network", "none", "-q", "-t", Image, dir).CombinedOutput(); err != nil {
		return fmt.Errorf("docker build: %w: %s", err, out)
	}
	return nil
}

// Run starts a container from the busybox image with --network none (unless
// args choose a network) and the test label, removing it when the test ends.
// args go between "docker run -d" and the image; cmd is the command.
func Run(tb testing.TB, args []string, cmd ...string) string {
	tb.Helper()
	img := BusyboxImage(tb)
	full := []string{"run", "-d", "--label", LabelTest + "=" + tb.Name()}
	if !hasNetwork(args) {
		full = append(full, "--network", "none")
	}
	full = append(full, args...)
	full = append(full, img)
	full = append(full, cmd...)
	id := Docker(tb, full...)
	tb.Cleanup(func() { Remove(id) })
	return id
}

// Create creates (does not start) a container, removed when the test ends.
// Use it for configurations that cannot start here, such as --privileged.
func Create(tb testing.TB, args []string, cmd ...string) string {
	tb.Helper()
	img := BusyboxImage(tb)
	full := []string{"create", "--label", LabelTest + "=" + tb.Name()}
	if !hasNetwork(args) {
		full = append(full, "--network", "none")
	}
	full = append(full, args...)
	full = append(full, img)
	full = append(full, cmd...)
	id := Docker(tb, full...)
	tb.Cleanup(func() { Remove(id) })
	return id
}

// Remove force-removes a container, ignoring "no such container".
func Remove(id string) { _, _ = Try("rm", "-f", "-v", id) }

func hasNetwork(args []string) bool {
	for _, a := range args {
		if a == "--network" || strings.HasPrefix(a, "--network=") || a == "--net" || strings.HasPrefix(a, "--net=") {
			return true
		}
	}
	return false
}
