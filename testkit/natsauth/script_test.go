package natsauth

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestCredsScriptAddsHostsAndKeepsSeeds: running scripts/nats-creds.sh again
// for a new host keeps every existing identity and adds the host's.
func TestCredsScriptAddsHostsAndKeepsSeeds(t *testing.T) {
	t.Parallel()
	d := Deploy(t, hostA)
	before, err := os.ReadFile(d.Seed("detector"))
	require.NoError(t, err)
	usersBefore, err := os.Stat(filepath.Join(d.Secrets(), "users.conf"))
	require.NoError(t, err)
	d.Creds(t, "web-3")
	usersAfter, err := os.Stat(filepath.Join(d.Secrets(), "users.conf"))
	require.NoError(t, err)
	// The same file, rewritten: compose bind-mounts it into a running
	// nats-server, which sees a renamed-over file never (a reload reads this).
	require.True(t, os.SameFile(usersBefore, usersAfter), "users.conf was replaced, not rewritten")
	after, err := os.ReadFile(d.Seed("detector"))
	require.NoError(t, err)
	require.Equal(t, string(before), string(after), "an existing seed is kept")

	users, err := os.ReadFile(filepath.Join(d.Secrets(), "users.conf"))
	require.NoError(t, err)
	for _, id := range []string{"detector", "indexer", "notifier", "setup", "admin", collector(hostA), "collector-web-3"} {
		require.Contains(t, string(users), "# "+id+"\n", "users.conf lists %s", id)
		fi, err := os.Stat(d.Seed(id))
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "%s's seed is private", id)
	}
	require.Equal(t, 7, strings.Count(string(users), "nkey: \"U"))
	require.Contains(t, string(users), `"whalewatch.telemetry.web-3.>"`)
}

func TestCredsScriptRefusesHostNamesThatWidenPermissions(t *testing.T) {
	t.Parallel()
	d := Deploy(t)
	// Dots, blanks and wildcards become '_' as in pkg/subject.Token; what
	// could break out of the quoted subject or the template is refused.
	for _, host := range []string{"a,b", `web"1`, "web$1", "h/../x\"", "hôte", ""} {
		cmd := exec.Command(filepath.Join(Root(), "scripts", "nats-creds.sh"), "-d", d.Secrets(), host)
		cmd.Env = append(os.Environ(), "NK="+d.nk)
		out, err := cmd.CombinedOutput()
		require.Error(t, err, "host %q accepted", host)
		require.Contains(t, string(out), "host name", "host %q", host)
	}
}
