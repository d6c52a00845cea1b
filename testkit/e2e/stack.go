// Package e2e runs whalewatch as it runs in production — the four service
// binaries and a nats-server binary, against the real Docker engine — with
// in-process Elasticsearch and Slack stand-ins that speak the real protocols.
package e2e

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/whalewatch/whalewatch/testkit/natstest"
)

// BinEnv names the directory holding prebuilt binaries (make test sets it to
// bin/); without it the binaries are built into a temporary directory.
const BinEnv = "WHALEWATCH_BIN"

var services = []string{"collector", "detector", "indexer", "notifier"}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// Binaries returns the directory with the service and nats-server binaries.
func Binaries(tb testing.TB) string {
	tb.Helper()
	if dir := os.Getenv(BinEnv); dir != "" {
		for _, b := range append([]string{"nats-server"}, services...) {
			if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
				tb.Fatalf("%s=%s lacks %s (run make build): %v", BinEnv, dir, b, err)
			}
		}
		return dir
	}
	buildOnce.Do(func() { buildDir, buildErr = build() })
	if buildErr != nil {
		tb.Fatalf("building binaries: %v", buildErr)
	}
	return buildDir
}

func build() (string, error) {
	out, err := exec.Command("go", "env", "GOWORK").Output()
	if err != nil || strings.TrimSpace(string(out)) == "" {
		return "", fmt.Errorf("finding the workspace root (go env GOWORK): %v", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	dir, err := os.MkdirTemp("", "whalewatch-bin-")
	if err != nil {
		return "", err
	}
	run := func(wd string, args ...string) error {
		cmd := exec.Command("go", args...)
		cmd.Dir = wd
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	for _, s := range services {
		if err := run(root, "build", "-o", filepath.Join(dir, s), "./services/"+s); err != nil {
			return "", err
		}
	}
	if err := run(filepath.Join(root, "testkit"), "build", "-o", filepath.Join(dir, "nats-server"), "github.com/nats-io/nats-server/v2"); err != nil {
		return "", err
	}
	return dir, nil
}

// Proc is a process the test started; Stop ends it with SIGTERM.
type Proc struct {
	Name  string
	Admin string // host:port of /metrics, /healthz, /readyz ("" for nats-server)
	Log   string
	cmd   *exec.Cmd
	done  chan error
}

// Start runs bin with args and env (added to the environment), logging to a
// file that is printed if the test fails. The process gets SIGTERM at the end
// of the test, and the test fails unless it then exits 0 within 20 s: that is
// the graceful-shutdown check.
func Start(tb testing.TB, name, bin string, env map[string]string, args ...string) *Proc {
	tb.Helper()
	p := &Proc{Name: name, Log: filepath.Join(tb.TempDir(), name+".log"), done: make(chan error, 1)}
	logf, err := os.Create(p.Log)
	if err != nil {
		tb.Fatal(err)
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.Env = os.Environ()
	for k, v := range env {
		p.cmd.Env = append(p.cmd.Env, k+"="+v)
	}
	p.Admin = env["HTTP_ADDR"]
	if err := p.cmd.Start(); err != nil {
		tb.Fatalf("starting %s: %v", name, err)
	}
	go func() { p.done <- p.cmd.Wait(); logf.Close() }()
	tb.Cleanup(func() {
		if err := p.Stop(20 * time.Second); err != nil {
			tb.Errorf("%s: %v", name, err)
		}
		if tb.Failed() {
			data, _ := os.ReadFile(p.Log)
			if len(data) > 8000 {
				data = data[len(data)-8000:]
			}
			tb.Logf("---- %s log (tail) ----\n%s", name, data)
		}
	})
	return p
}

// Stop sends SIGTERM and waits for a clean exit; it is idempotent.
func (p *Proc) Stop(timeout time.Duration) error {
	if p.cmd.ProcessState != nil {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		if err != nil {
			return fmt.Errorf("exit after SIGTERM: %w", err)
		}
		return nil
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("did not stop within %v of SIGTERM", timeout)
	}
}

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case err := <-p.done:
		p.done <- err
		return true
	default:
		return false
	}
}

// WaitReady polls /readyz until it answers 200.
func (p *Proc) WaitReady(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if p.Exited() {
			tb.Fatalf("%s exited before it was ready", p.Name)
		}
		status, body := get("http://" + p.Admin + "/readyz")
		if status == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s not ready after %v: %d %s", p.Name, timeout, status, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func get(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return resp.StatusCode, strings.TrimSpace(b.String())
}

// FreeAddr returns a loopback address with a port that was free a moment ago.
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// StartNATS runs the nats-server binary with JetStream on a free loopback port
// and returns its client URL.
func StartNATS(tb testing.TB, bin string) string {
	tb.Helper()
	addr := FreeAddr(tb)
	host, port, _ := net.SplitHostPort(addr)
	Start(tb, "nats-server", filepath.Join(bin, "nats-server"), nil,
		"-a", host, "-p", port, "-js", "-sd", tb.TempDir(), "-n", "e2e")
	natstest.Eventually(tb, 10*time.Second, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "nats-server did not listen on %s", addr)
	return "nats://" + addr
}
