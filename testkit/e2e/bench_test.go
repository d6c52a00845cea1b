package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/whalewatch/whalewatch/testkit/dockertest"
)

// BenchmarkExecToAlert measures, on the real stack, the time from starting
// `docker exec -d <c> nc -l -p <port>` to the threat on NATS and to the Slack
// post, against the baseline of a plain `docker exec <c> true` round trip in
// the same run. Run it with make bench (or -bench ExecToAlert -benchtime 30x).
func BenchmarkExecToAlert(b *testing.B) {
	// Every nc exec is published alone: in one incident the repeats would fold.
	st := StartStackWith(b, StackOptions{Detector: map[string]string{"INCIDENT_WINDOW": "0s"}})
	c := dockertest.Run(b, []string{"--name", "ww-bench-" + st.Host}, "sleep", "3600")

	b.Run("baseline-docker-exec-true", func(b *testing.B) {
		var lat []time.Duration
		for b.Loop() {
			start := time.Now()
			dockertest.Docker(b, "exec", c, "true")
			lat = append(lat, time.Since(start))
		}
		report(b, "exec", lat)
	})

	b.Run("nc-exec-to-threat-and-slack", func(b *testing.B) {
		var toThreat, toSlack []time.Duration
		port := 5000
		for b.Loop() {
			port++
			cmd := fmt.Sprintf("nc -l -p %d", port) // a new command line each time
			start := time.Now()
			dockertest.Docker(b, "exec", "-d", c, "nc", "-l", "-p", fmt.Sprint(port))
			_, at := st.waitThreatWith(b, c, cmd, 30*time.Second)
			toThreat = append(toThreat, at.Sub(start))
			post := st.waitPostWith(b, cmd, 30*time.Second)
			toSlack = append(toSlack, post.Sub(start))
		}
		report(b, "threat", toThreat)
		report(b, "slack", toSlack)
	})
}

func (st *Stack) waitThreatWith(tb testing.TB, containerID, cmd string, timeout time.Duration) (string, time.Time) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		st.mu.Lock()
		for _, t := range st.threats {
			if t.Container != nil && t.Container.ID == containerID && t.Process != nil && t.Process.CommandLine == cmd {
				at := st.arrived[t.Event.ID]
				st.mu.Unlock()
				return t.Event.ID, at
			}
		}
		st.mu.Unlock()
		time.Sleep(time.Millisecond)
	}
	tb.Fatalf("no threat for %q", cmd)
	return "", time.Time{}
}

func (st *Stack) waitPostWith(tb testing.TB, cmd string, timeout time.Duration) time.Time {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for _, m := range st.Slack.Messages() {
			if strings.Contains(m.AllText(), cmd) {
				return m.At
			}
		}
		time.Sleep(time.Millisecond)
	}
	tb.Fatalf("no Slack post for %q", cmd)
	return time.Time{}
}

// report adds p50 and p99 of lat, in milliseconds, to the benchmark output.
func report(b *testing.B, name string, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	q := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
	}
	b.ReportMetric(q(0.50), name+"-p50-ms")
	b.ReportMetric(q(0.99), name+"-p99-ms")
	b.ReportMetric(0, "ns/op") // wall time per op is not the figure here
}
