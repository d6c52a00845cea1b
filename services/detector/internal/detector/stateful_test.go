package detector

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/whalewatch/whalewatch/services/detector/internal/anomaly"
	"github.com/whalewatch/whalewatch/services/detector/internal/state"
)

// TestFeatureOrder keeps the tracker's vector in the anomaly model's order.
func TestFeatureOrder(t *testing.T) {
	t.Parallel()
	require.Equal(t, anomaly.Names(), state.FeatureNames)
}
