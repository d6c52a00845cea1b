package e2e

import (
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/testkit/dockertest"
)

// ScorecardEnv turns the scorecard on: it takes about two minutes, so the
// normal test run skips it. `make scorecard` sets it.
const ScorecardEnv = "WHALEWATCH_SCORECARD"

// scenario is one attack or benign workload in its own container.
type scenario struct {
	name   string
	attack bool
	// args and cmd start the container (busybox image; --network none).
	args []string
	cmd  []string
	// run performs the workload; it returns when it is started.
	run func(tb testing.TB, id string)
	// expect: an attack is detected when one of these rules fires.
	expect []string
	// wait is how long to wait for detection (attacks) or to observe
	// (benign workloads).
	wait time.Duration
}

func execIn(args ...string) func(testing.TB, string) {
	return func(tb testing.TB, id string) {
		_, _ = dockertest.Try(append([]string{"exec", id}, args...)...) // failures are part of some attacks
	}
}

func shIn(script string) func(testing.TB, string) { return execIn("sh", "-c", script) }

func detachedIn(script string) func(testing.TB, string) {
	return func(tb testing.TB, id string) { dockertest.Docker(tb, "exec", "-d", id, "sh", "-c", script) }
}

var sleeper = []string{"sleep", "3600"}

// scenarios are the scorecard's cases. Attacks are tried as a new user would;
// benign workloads are what containers do all day.
var scenarios = []scenario{
	{name: "bind shell: nc -l -p 4444 -e sh", attack: true, cmd: sleeper,
		run: detachedIn("nc -l -p 4444 -e sh -i"), expect: []string{"netcat-shell", "shell-with-network-stdio"}, wait: 30 * time.Second},
	{name: "reverse shell: nc 127.0.0.1 4445 -e sh", attack: true, cmd: sleeper,
		run:    detachedIn("sleep 600 | nc -l -p 4445 >/dev/null & sleep 1; nc 127.0.0.1 4445 -e sh"),
		expect: []string{"netcat-shell", "shell-with-network-stdio"}, wait: 30 * time.Second},
	{name: "docker exec sh -c 'cat /etc/shadow'", attack: true, cmd: sleeper,
		run: shIn("cat /etc/shadow"), expect: []string{"shell-command-in-docker-exec"}, wait: 30 * time.Second},
	{name: "interactive docker exec sh", attack: true, cmd: sleeper,
		run: execIn("sh"), expect: []string{"shell-in-docker-exec"}, wait: 30 * time.Second},
	{name: "account added to /etc/passwd", attack: true, cmd: sleeper,
		run: shIn("echo 'toor:x:0:0::/root:/bin/sh' >> /etc/passwd"), expect: []string{"write-account-files"}, wait: 30 * time.Second},
	{name: "cron job written", attack: true, cmd: sleeper,
		run: shIn("mkdir -p /etc/cron.d && echo '* * * * * root /tmp/x' > /etc/cron.d/x"), expect: []string{"write-cron"}, wait: 30 * time.Second},
	{name: "ssh key added", attack: true, cmd: sleeper,
		run: shIn("mkdir -p /root/.ssh && echo 'ssh-ed25519 AAAA attacker' >> /root/.ssh/authorized_keys"), expect: []string{"write-ssh-keys"}, wait: 30 * time.Second},
	{name: "shell profile backdoor", attack: true, cmd: sleeper,
		run: shIn("echo 'nc 127.0.0.1 4444 -e sh &' >> /root/.profile"), expect: []string{"write-shell-profile"}, wait: 30 * time.Second},
	{name: "ld.so.preload", attack: true, cmd: sleeper,
		run: shIn("echo /tmp/x.so > /etc/ld.so.preload"), expect: []string{"write-ld-preload"}, wait: 30 * time.Second},
	{name: "setuid copy of a shell", attack: true, cmd: sleeper,
		run: shIn("cp /bin/busybox /tmp/.sh && chmod 4755 /tmp/.sh"), expect: []string{"setuid-setgid-bit-set"}, wait: 30 * time.Second},
	{name: "payload dropped in /tmp and run", attack: true, cmd: sleeper,
		run: shIn("cp /bin/busybox /tmp/kworker && /tmp/kworker true"), expect: []string{"exec-from-temp-dir", "dropped-binary-executed"}, wait: 30 * time.Second},
	{name: "miner by name", attack: true, cmd: sleeper,
		run: shIn("cp /bin/busybox /xmrig && /xmrig --donate-level 1; true"), expect: []string{"crypto-miner-process"}, wait: 30 * time.Second},
	{name: "loopback port scan, 20 ports", attack: true, cmd: sleeper,
		run: detachedIn("for p in $(seq 7001 7020); do sleep 600 | nc -l -p $p >/dev/null & done; sleep 1; " +
			"for p in $(seq 7001 7020); do sleep 600 | nc 127.0.0.1 $p & done; wait"),
		expect: []string{"port-scan-connection-fanout"}, wait: 40 * time.Second},
	{name: "busy loop from /tmp (CPU limit 0.05)", attack: true, args: []string{"--cpus", "0.05"}, cmd: sleeper,
		run:    detachedIn("cp /bin/busybox /tmp/sh && exec /tmp/sh -c 'while :; do :; done'"),
		expect: []string{"sustained-high-cpu-suspicious-process", "sustained-high-cpu"}, wait: 90 * time.Second},

	{name: "health check every second", args: []string{"--health-cmd", "test -d /", "--health-interval", "1s"}, cmd: sleeper,
		run: func(testing.TB, string) {}, wait: 20 * time.Second},
	{name: "wget health check of a web server, every second", cmd: []string{"httpd", "-f", "-p", "8080", "-h", "/etc"},
		args: []string{"--health-cmd", "wget -q -O /dev/null http://127.0.0.1:8080/passwd || exit 1", "--health-interval", "1s"},
		run:  func(testing.TB, string) {}, wait: 20 * time.Second},
	{name: "nc -z health check", cmd: []string{"httpd", "-f", "-p", "8080", "-h", "/etc"},
		args: []string{"--health-cmd", "nc -z 127.0.0.1 8080", "--health-interval", "1s"},
		run:  func(testing.TB, string) {}, wait: 20 * time.Second},
	{name: "build script: docker exec sh -c 'make'-style", cmd: sleeper,
		run:  shIn("mkdir -p /tmp/build && cd /tmp/build && for i in 1 2 3; do echo \"int f$i;\" > f$i.c; cat f$i.c >> all.c; done && ls"),
		wait: 20 * time.Second},
	{name: "backup: tar czf", cmd: sleeper,
		run: execIn("tar", "czf", "/tmp/backup.tgz", "/etc", "/bin"), wait: 20 * time.Second},
	{name: "probe: wget -q -O- 127.0.0.1", cmd: []string{"httpd", "-f", "-p", "8080", "-h", "/etc"},
		run: execIn("wget", "-q", "-O-", "http://127.0.0.1:8080/passwd"), wait: 20 * time.Second},
	{name: "service writing its data and logs", cmd: []string{"sh", "-c", "mkdir -p /var/lib/app; i=0; while :; do i=$((i+1)); echo \"request $i ok\"; echo $i > /var/lib/app/state; sleep 1; done"},
		run: func(testing.TB, string) {}, wait: 20 * time.Second},
	{name: "CPU burst under 10 s", cmd: sleeper,
		run: execIn("timeout", "8", "sh", "-c", "while :; do :; done"), wait: 25 * time.Second},
}

type outcome struct {
	sc       scenario
	detected string        // the expected rule that fired first
	ttd      time.Duration // time to detect
	threats  []*event.Event
}

// TestScorecard runs every scenario against one stack and writes the table
// into docs/DETECTION.md. Run it with `make scorecard`.
func TestScorecard(t *testing.T) {
	if os.Getenv(ScorecardEnv) == "" {
		t.Skipf("set %s=1 (make scorecard) to run the scenario scorecard", ScorecardEnv)
	}
	st := StartStackWith(t, StackOptions{Collector: behaviourCollector})
	var mu sync.Mutex
	results := make([]outcome, len(scenarios))
	t.Run("scenarios", func(t *testing.T) {
		for i, sc := range scenarios {
			t.Run(sc.name, func(t *testing.T) {
				t.Parallel()
				args := append([]string{"--name", fmt.Sprintf("ww-score-%d-%s", i, st.Host)}, sc.args...)
				id := dockertest.Run(t, args, sc.cmd...)
				// The container's first telemetry reached the collector: it is watched.
				st.WaitTelemetry(t, 30*time.Second, "first telemetry of "+sc.name, func(e *event.Event) bool { return onContainer(e, id) })
				start := time.Now()
				sc.run(t, id)
				o := outcome{sc: sc}
				deadline := start.Add(sc.wait)
				if sc.attack {
					poll(sc.wait, func() bool {
						for _, th := range st.ThreatsOf(id, "") {
							if slices.Contains(sc.expect, th.Rule.ID) {
								st.mu.Lock()
								o.detected, o.ttd = th.Rule.ID, st.arrived[th.Event.ID].Sub(start)
								st.mu.Unlock()
								return true
							}
						}
						return false
					}) // a miss is a result, not a failure
				} else {
					time.Sleep(time.Until(deadline)) // benign: observed for a fixed time (measurement, not synchronisation)
				}
				o.threats = st.ThreatsOf(id, "")
				mu.Lock()
				results[i] = o
				mu.Unlock()
			})
		}
	})
	doc := scorecardTable(results, loadAverage())
	t.Log("\n" + doc)
	path := "../../docs/DETECTION.md"
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	begin, end := "<!-- scorecard:begin -->\n", "<!-- scorecard:end -->"
	s := string(data)
	i, j := strings.Index(s, begin), strings.Index(s, end)
	require.True(t, i >= 0 && j > i, "%s lacks the scorecard markers", path)
	require.NoError(t, os.WriteFile(path, []byte(s[:i+len(begin)]+doc+s[j:]), 0o644))
	for _, o := range results {
		if !o.sc.attack {
			for _, th := range o.threats {
				require.NotContains(t, []event.Severity{event.SeverityHigh, event.SeverityCritical}, th.Whalewatch.Severity,
					"benign %q raised %s %s", o.sc.name, th.Whalewatch.Severity, th.Rule.ID)
			}
		}
	}
}

// poll calls f until it is true or timeout passes, and returns its last answer.
func poll(timeout time.Duration, f func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if f() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func scorecardTable(results []outcome, load string) string {
	var b strings.Builder
	b.WriteString("| Scenario | Kind | Detected by | Time to detect | Threats raised (severity) |\n|---|---|---|---|---|\n")
	detected, attacks, benignHigh, benign := 0, 0, 0, 0
	var ttds []time.Duration
	for _, o := range results {
		kind, by, ttd := "benign", "—", "—"
		if o.sc.attack {
			kind = "attack"
			attacks++
			if o.detected != "" {
				detected++
				by, ttd = "`"+o.detected+"`", o.ttd.Round(10*time.Millisecond).String()
				ttds = append(ttds, o.ttd)
			} else {
				by = "**missed**"
			}
		} else {
			benign++
			for _, th := range o.threats {
				if th.Whalewatch.Severity == event.SeverityHigh || th.Whalewatch.Severity == event.SeverityCritical {
					benignHigh++
					break
				}
			}
		}
		seen := map[string]bool{}
		var raised []string
		for _, th := range o.threats {
			k := fmt.Sprintf("`%s` (%s)", th.Rule.ID, th.Whalewatch.Severity)
			if !seen[k] {
				seen[k] = true
				raised = append(raised, k)
			}
		}
		sort.Strings(raised)
		all := strings.Join(raised, ", ")
		if all == "" {
			all = "none"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", strings.ReplaceAll(o.sc.name, "|", `\|`), kind, by, ttd, all)
	}
	slices.Sort(ttds)
	median := "—"
	if len(ttds) > 0 {
		median = ttds[len(ttds)/2].Round(10 * time.Millisecond).String()
	}
	fmt.Fprintf(&b, "\nAttacks detected: %d of %d (median time to detect %s). Benign workloads with a high or critical "+
		"alert: %d of %d. Run on %s, load average %s; the collector of this run samples resources and docker diff "+
		"every 2 s and sockets every second (testkit/e2e/behaviour_test.go).\n",
		detected, attacks, median, benignHigh, benign, time.Now().UTC().Format("2006-01-02"), load)
	return b.String()
}
