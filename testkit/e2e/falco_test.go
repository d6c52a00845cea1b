package e2e

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/testkit/dockertest"
)

// Attempts an attacker makes in a container, the kind Falco's default rules
// catch, each raise their rule although the container's confinement refuses
// most of them: the attempt is the signal. The collector sees them today as
// docker exec and process telemetry; the kernel sensor's file and syscall
// telemetry adds the attempts made without a new process.
func TestFalcoClassAttemptsBecomeThreats(t *testing.T) {
	st := StartStack(t, false)
	benign := dockertest.Run(t, []string{"--name", "ww-e2e-falco-benign-" + st.Host}, "sleep", "3600")
	bad := dockertest.Run(t, []string{"--name", "ww-e2e-falco-" + st.Host}, "sleep", "3600")

	for _, tc := range []struct {
		rule     string
		severity event.Severity
		cmd      []string
	}{
		{"search-private-keys", event.SeverityHigh, []string{"find", "/", "-name", "id_rsa"}},
		{"mount-in-container", event.SeverityHigh, []string{"mount", "-t", "tmpfs", "none", "/mnt"}},
		{"namespace-unshare", event.SeverityHigh, []string{"unshare", "-r", "true"}},
		{"namespace-setns", event.SeverityHigh, []string{"nsenter", "-t", "1", "-m", "true"}},
		{"kernel-module-tool", event.SeverityHigh, []string{"insmod", "/tmp/rootkit.ko"}},
		{"release-agent-escape", event.SeverityCritical, []string{"sh", "-c", "echo /x > /tmp/release_agent"}},
		{"remove-bulk-data", event.SeverityHigh, []string{"shred", "-u", "/tmp/none"}},
	} {
		// Refused or failing commands are the point: docker exec reports their
		// failure, which is fine.
		_, _ = dockertest.Try(append([]string{"exec", bad}, tc.cmd...)...)
		threat, _ := st.WaitThreat(t, bad, tc.rule, 30*time.Second)
		require.Equal(t, tc.severity, threat.Whalewatch.Severity, tc.rule)
	}
	for _, th := range st.Threats() {
		if th.Container != nil {
			require.NotEqual(t, benign, th.Container.ID, "threat for the benign container: %s", th.Message)
		}
	}
}
