package service

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/whalewatch/whalewatch/pkg/flagenv"
)

// healthcheck asks the running service, in the same container and with the
// same flags and environment, whether it is ready: GET /readyz on its admin
// address. Status 0 means ready, 1 not ready or unreachable, 2 bad usage.
func healthcheck(ctx context.Context, name string, args []string, env Env, cfg Config) int {
	fs := flag.NewFlagSet(name+" healthcheck", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	cfg.RegisterFlags(fs)
	timeout := fs.Duration("healthcheck-timeout", 5*time.Second, "how long the healthcheck waits for /readyz")
	if err := flagenv.Parse(fs, args, env.Getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(env.Stderr, "%s healthcheck: %v\n", name, err)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(env.Stderr, "%s healthcheck: unexpected argument %q\n", name, fs.Arg(0))
		return 2
	}
	f := fs.Lookup("http-addr")
	if f == nil || f.Value.String() == "" {
		fmt.Fprintf(env.Stderr, "%s healthcheck: the admin endpoint is off (HTTP_ADDR empty): nothing to ask\n", name)
		return 1
	}
	url, err := readyURL(f.Value.String())
	if err != nil {
		fmt.Fprintf(env.Stderr, "%s healthcheck: %v\n", name, err)
		return 2
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if err := getReady(ctx, url); err != nil {
		fmt.Fprintf(env.Stderr, "%s healthcheck: %v\n", name, err)
		return 1
	}
	fmt.Fprintf(env.Stdout, "%s ready\n", name)
	return 0
}

// readyURL is /readyz on the admin address; a wildcard listen address is
// asked on loopback.
func readyURL(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("http-addr %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/readyz", nil
}

func getReady(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	// Never through a proxy from the environment: the service is local.
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("asking %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}
