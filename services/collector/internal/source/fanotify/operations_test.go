package fanotify

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestOperationsOfMergedMasks(t *testing.T) {
	t.Parallel()
	tests := []struct {
		mask uint64
		want []string
	}{
		{fanCreate, []string{"create"}},
		{fanModify, []string{"write"}},
		{fanCreate | fanModify, []string{"create", "write"}}, // `echo x > f` read late: one merged event
		{fanCreate | fanModify | fanAttrib, []string{"create", "write", "chmod"}},
		{fanMovedFrom, []string{"rename"}},
		{fanAttrib | fanDelete, []string{"chmod", "unlink"}},
		{0, nil},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, operations(tt.mask), "mask %#x", tt.mask)
	}
}
