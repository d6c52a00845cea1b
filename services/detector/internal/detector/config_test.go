package detector

import (
	"bytes"
	"flag"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/pkg/flagenv"
	"github.com/whalewatch/whalewatch/testkit/golden"
)

// TestConfigDoc keeps docs/config/detector.md equal to the flags.
func TestConfigDoc(t *testing.T) {
	var c Config
	fs := flag.NewFlagSet("detector", flag.ContinueOnError)
	c.RegisterFlags(fs)
	var b bytes.Buffer
	require.NoError(t, flagenv.WriteMarkdown(&b, fs))
	golden.Check(t, "../../../../docs/config/detector.md", b.Bytes())
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, args, wantErr string
	}{
		{name: "defaults"},
		{name: "negative window", args: "-incident-window=-1s", wantErr: "incident-window must not be negative"},
		{name: "no consumer", args: "-consumer=", wantErr: "consumer name is required"},
		{name: "bad log level", args: "-log-level=loud", wantErr: "log-level"},
		{name: "no NATS", args: "-nats-url=", wantErr: "nats-url is required"},
		{name: "bad stream limit", args: "-stream-telemetry-max-bytes=0", wantErr: "stream-telemetry-max-bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var c Config
			fs := flag.NewFlagSet("detector", flag.ContinueOnError)
			c.RegisterFlags(fs)
			var args []string
			if tt.args != "" {
				args = []string{tt.args}
			}
			require.NoError(t, fs.Parse(args))
			err := c.Validate()
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
}
