package source

import (
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestUnixMode(t *testing.T) {
	t.Parallel()
	require.Equal(t, "0755", UnixMode(0o755))
	require.Equal(t, "6711", UnixMode(0o711|os.ModeSetuid|os.ModeSetgid))
	require.Equal(t, "1777", UnixMode(0o777|os.ModeSticky|os.ModeDir))
}
