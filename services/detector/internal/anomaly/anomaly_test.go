package anomaly

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// normal returns n ordinary vectors of a small web server, fixed by seed:
// correlated CPU and traffic, steady memory, a handful of processes.
func normal(n int, seed uint64) []Features {
	rng := rand.New(rand.NewPCG(seed, 7))
	out := make([]Features, n)
	for i := range out {
		load := 0.5 + 0.5*math.Sin(float64(i)/40) + 0.1*rng.NormFloat64()
		out[i] = Features{
			CPUPercent:       20 + 15*load + 2*rng.NormFloat64(),
			MemoryBytes:      200e6 + 20e6*load + 2e6*rng.NormFloat64(),
			NetRxBytesPerSec: 1e5 * (1 + load + 0.1*rng.NormFloat64()),
			NetTxBytesPerSec: 3e5 * (1 + load + 0.1*rng.NormFloat64()),
			ProcessCount:     float64(5 + rng.IntN(3)),
			ConnectionCount:  float64(10 + int(10*load) + rng.IntN(4)),
			NewProcessRate:   0.05 * float64(rng.IntN(3)),
		}
	}
	return out
}

func vectors(fs []Features) []Vector {
	out := make([]Vector, len(fs))
	for i, f := range fs {
		out[i] = f.Vector()
	}
	return out
}

// outliers returns one vector per feature, ordinary except for that feature,
// which is far outside the range of normal().
// base is an ordinary vector of normal().
var base = Features{CPUPercent: 27, MemoryBytes: 210e6, NetRxBytesPerSec: 1.5e5, NetTxBytesPerSec: 4.5e5, ProcessCount: 6, ConnectionCount: 15, NewProcessRate: 0.05}

func outliers() map[string]Features {
	out := map[string]Features{}
	for j, name := range Names() {
		v := base.Vector()
		v[j] = map[int]float64{
			FeatCPUPercent:       195,
			FeatMemoryBytes:      900e6,
			FeatNetRxBytesPerSec: 5e6,
			FeatNetTxBytesPerSec: 8e7,
			FeatProcessCount:     300,
			FeatConnectionCount:  900,
			FeatNewProcessRate:   40,
		}[j]
		out[name] = fromVector(v)
	}
	return out
}

func fromVector(v Vector) Features {
	return Features{v[0], v[1], v[2], v[3], v[4], v[5], v[6]}
}

func TestForestOutliersScoreHigher(t *testing.T) {
	t.Parallel()
	f := Fit(vectors(normal(1024, 1)), 100, 256, 42)
	require.Equal(t, 256, f.SampleSize())

	for _, mode := range []Scoring{RangeAware, Vanilla} {
		var inlier []float64
		for _, v := range vectors(normal(400, 2)) {
			s := f.Score(v, mode)
			require.Greater(t, s, 0.0)
			require.LessOrEqual(t, s, 1.0)
			inlier = append(inlier, s)
		}
		slices.Sort(inlier)
		median, p99 := inlier[len(inlier)/2], inlier[len(inlier)*99/100]
		require.Less(t, median, 0.5, "an ordinary vector scores about 0.5 or less")

		for name, o := range outliers() {
			s := f.Score(o.Vector(), mode)
			require.Less(t, s, 1.0, name)
			if mode == RangeAware {
				require.Greater(t, s, p99, name)
				require.Greater(t, s, 0.6, name)
			} else {
				// Vanilla cannot see past the training range: 195% CPU
				// walks the trees like the highest CPU of the window, so
				// it only beats the same vector unshifted.
				require.Greater(t, s, f.Score(base.Vector(), mode), name)
			}
		}
	}
}

func TestForestRangeAware(t *testing.T) {
	t.Parallel()
	f := Fit(vectors(normal(1024, 1)), 100, 256, 42)
	for _, v := range vectors(normal(100, 2)) {
		require.GreaterOrEqual(t, f.Score(v, RangeAware), f.Score(v, Vanilla), "a shorter expected path, never longer")
	}
	v := base
	last, lastVanilla := 0.0, 0.0
	for i, cpu := range []float64{45, 60, 100, 200, 400} {
		v.CPUPercent = cpu
		s, sv := f.Score(v.Vector(), RangeAware), f.Score(v.Vector(), Vanilla)
		require.Greater(t, s, last, "further out scores higher")
		if i > 0 {
			require.Equal(t, lastVanilla, sv, "vanilla saturates beyond the training range")
		}
		last, lastVanilla = s, sv
	}
}

func TestForestExplainNamesShiftedFeature(t *testing.T) {
	t.Parallel()
	f := Fit(vectors(normal(1024, 1)), 100, 256, 42)
	for name, o := range outliers() {
		for _, mode := range []Scoring{RangeAware, Vanilla} {
			t.Run(fmt.Sprint(name, mode), func(t *testing.T) {
				t.Parallel()
				s, shares := f.Explain(o.Vector(), mode)
				require.InDelta(t, f.Score(o.Vector(), mode), s, 1e-6, "float32 and float64 sums")
				var sum float64
				for _, x := range shares {
					require.GreaterOrEqual(t, x, 0.0)
					sum += x
				}
				require.InDelta(t, 1, sum, 1e-9)
				got := top(shares)
				require.NotEmpty(t, got)
				require.Equal(t, name, got[0], "shares %v", shares)
			})
		}
	}
}

func TestForestTwoFeatureOutlierNamesBoth(t *testing.T) {
	t.Parallel()
	f := Fit(vectors(normal(1024, 1)), 100, 256, 42)
	o := Features{CPUPercent: 27, MemoryBytes: 210e6, NetRxBytesPerSec: 1.5e5, NetTxBytesPerSec: 4.5e5, ProcessCount: 300, ConnectionCount: 15, NewProcessRate: 40}
	_, shares := f.Explain(o.Vector(), RangeAware)
	got := top(shares)
	require.Len(t, got, 2, "shares %v", shares)
	require.ElementsMatch(t, []string{"process_count", "new_process_rate"}, got)
}

func TestForestDeterministic(t *testing.T) {
	t.Parallel()
	data := vectors(normal(600, 3))
	probe := vectors(normal(50, 4))
	a, b, c := Fit(data, 50, 128, 9), Fit(data, 50, 128, 9), Fit(data, 50, 128, 10)
	differ := false
	for _, v := range probe {
		require.Equal(t, a.Score(v, RangeAware), b.Score(v, RangeAware))
		differ = differ || a.Score(v, RangeAware) != c.Score(v, RangeAware)
	}
	require.True(t, differ, "another seed grows other trees")
}

func TestForestDegenerate(t *testing.T) {
	t.Parallel()
	require.Nil(t, Fit(nil, 100, 256, 1))
	require.Nil(t, Fit(vectors(normal(10, 1)), 0, 256, 1))

	one := Fit([]Vector{{1, 2, 3, 4, 5, 6, 7}}, 10, 256, 1)
	require.Equal(t, 0.5, one.Score(Vector{}, RangeAware))

	same := make([]Vector, 300)
	for i := range same {
		same[i] = Vector{1, 2, 3, 4, 5, 6, 7}
	}
	f := Fit(same, 10, 256, 1)
	s, shares := f.Explain(Vector{100, 2, 3, 4, 5, 6, 7}, Vanilla)
	require.False(t, math.IsNaN(s))
	require.Equal(t, Vector{}, shares, "no cut can separate anything from identical vectors")
	require.Nil(t, top(shares))
}

func TestFeaturesVectorClamps(t *testing.T) {
	t.Parallel()
	v := Features{
		CPUPercent:       math.NaN(),
		MemoryBytes:      math.Inf(1),
		NetRxBytesPerSec: -5,
		NetTxBytesPerSec: math.Inf(-1),
		ProcessCount:     3,
		ConnectionCount:  1e300,
		NewProcessRate:   0.5,
	}.Vector()
	require.Equal(t, Vector{0, maxValue, 0, 0, 3, maxValue, 0.5}, v)
	require.Len(t, Names(), NumFeatures)
	require.Equal(t, "cpu_percent", Name(FeatCPUPercent))
	require.Equal(t, "new_process_rate", Name(FeatNewProcessRate))
	require.Empty(t, Name(NumFeatures))
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  Config
		err  string
	}{
		{"zero takes defaults", Config{}, ""},
		{"small", Config{Trees: 1, SampleSize: 2, Window: 2, MinTrain: 2, RetrainEvery: 1, MaxKeys: 1}, ""},
		{"trees", Config{Trees: MaxTrees + 1}, "anomaly trees 1001: want 1..1000"},
		{"sample size", Config{SampleSize: MaxSampleSize + 1}, "anomaly sample size 4097: want 2..4096"},
		{"min train above window", Config{Window: 100, MinTrain: 200}, "anomaly min train 200: want 2..window (100)"},
		{"negative", Config{RetrainEvery: -1}, "anomaly retrain every -1: want at least 1"},
		{"explain", Config{ExplainAbove: 2}, "anomaly explain above 2: want 0..1"},
		{"scoring", Config{Scoring: 7}, "anomaly scoring 7: want RangeAware or Vanilla"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := tc.cfg.Validate()
			_, newErr := New(tc.cfg)
			if tc.err == "" {
				require.NoError(t, err)
				require.NoError(t, newErr)
				return
			}
			require.EqualError(t, err, tc.err)
			require.Error(t, newErr)
		})
	}
}

func TestModelUntrainedUntilMinTrain(t *testing.T) {
	t.Parallel()
	m, err := New(Config{MinTrain: 100, Window: 200, RetrainEvery: 50})
	require.NoError(t, err)
	require.Equal(t, Result{}, m.Score("nginx", Features{CPUPercent: 1}), "unknown key")
	require.False(t, m.Train("nginx"), "unknown key")

	data := normal(101, 1)
	for i, f := range data[:100] {
		r := m.Observe("nginx", f)
		require.False(t, r.Trained, "vector %d", i)
		require.Zero(t, r.Score)
		require.Nil(t, r.Top)
	}
	// The 100th vector made the first training due; the 101st is scored.
	r := m.Observe("nginx", data[100])
	require.True(t, r.Trained)
	require.Greater(t, r.Score, 0.0)
	require.Less(t, r.Score, 0.6)
	require.Nil(t, r.Top, "ordinary vectors are not explained")
	require.Equal(t, Result{}, m.Score("redis", data[0]), "keys do not share forests")
}

func TestModelObserveExplainsOutlier(t *testing.T) {
	t.Parallel()
	m, err := New(Config{ExplainAbove: 0.5})
	require.NoError(t, err)
	for _, f := range normal(1024, 1) {
		m.Observe("web", f)
	}
	r := m.Score("web", outliers()["net_tx_bytes_per_sec"])
	require.True(t, r.Trained)
	require.Greater(t, r.Score, m.Config().ExplainAbove)
	require.Equal(t, "net_tx_bytes_per_sec", r.Top[0])
	require.Greater(t, r.Shares[FeatNetTxBytesPerSec], 0.5)
}

func TestModelDeterministic(t *testing.T) {
	t.Parallel()
	run := func(seed uint64) []float64 {
		m, err := New(Config{Trees: 20, SampleSize: 64, Window: 256, MinTrain: 64, RetrainEvery: 32, Seed: seed})
		require.NoError(t, err)
		var out []float64
		for _, f := range normal(400, 5) {
			out = append(out, m.Observe("k", f).Score)
		}
		return out
	}
	require.Equal(t, run(1), run(1))
	require.NotEqual(t, run(1), run(2))
}

func TestModelWindowForgets(t *testing.T) {
	t.Parallel()
	m, err := New(Config{Window: 300, MinTrain: 300, RetrainEvery: 300, ExplainAbove: 0.5})
	require.NoError(t, err)
	regime := func(cpu float64, seed uint64) []Features {
		fs := normal(300, seed)
		for i := range fs {
			fs[i].CPUPercent = cpu + fs[i].CPUPercent/10
		}
		return fs
	}
	idle, busy := regime(5, 1), regime(150, 2)
	probeIdle, probeBusy := regime(5, 3)[0], regime(150, 4)[0]

	for _, f := range idle {
		m.Observe("app", f)
	}
	before := [2]float64{m.Score("app", probeIdle).Score, m.Score("app", probeBusy).Score}
	require.Less(t, before[0], 0.5)
	require.Greater(t, before[1], 0.5)

	// A full window of the new regime retrains on it alone.
	for _, f := range busy {
		m.Observe("app", f)
	}
	require.Less(t, m.Score("app", probeBusy).Score, 0.5)
	r := m.Score("app", probeIdle)
	require.Greater(t, r.Score, 0.5, "the old regime is forgotten")
	require.Equal(t, "cpu_percent", r.Top[0])
}

func TestModelTrainOnDemand(t *testing.T) {
	t.Parallel()
	m, err := New(Config{MinTrain: 500, Window: 1000})
	require.NoError(t, err)
	m.Observe("a", normal(1, 1)[0])
	require.False(t, m.Train("a"), "one vector is not enough")
	for _, f := range normal(50, 1) {
		m.Observe("a", f)
	}
	require.False(t, m.Score("a", normal(1, 2)[0]).Trained)
	require.True(t, m.Train("a"))
	require.True(t, m.Score("a", normal(1, 2)[0]).Trained)
}

func TestModelEvictsLeastRecentlyUsed(t *testing.T) {
	t.Parallel()
	m, err := New(Config{MaxKeys: 2, MinTrain: 2, Window: 10, Trees: 5, SampleSize: 8})
	require.NoError(t, err)
	feed := func(key string) {
		for _, f := range normal(3, 1) {
			m.Observe(key, f)
		}
	}
	feed("a")
	feed("b")
	require.True(t, m.Score("a", Features{}).Trained) // a is now the most recent
	feed("c")                                         // evicts b
	require.Equal(t, 2, m.Len())
	require.True(t, m.Score("a", Features{}).Trained)
	require.False(t, m.Score("b", Features{}).Trained)
	require.True(t, m.Score("c", Features{}).Trained)

	m.Forget("a")
	require.Equal(t, 1, m.Len())
	require.False(t, m.Score("a", Features{}).Trained)
}

func TestModelConcurrent(t *testing.T) {
	t.Parallel()
	m, err := New(Config{Trees: 10, SampleSize: 32, Window: 128, MinTrain: 32, RetrainEvery: 16, MaxKeys: 3})
	require.NoError(t, err)
	data := normal(300, 1)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			key := fmt.Sprint("img", g%4)
			for _, f := range data {
				r := m.Observe(key, f)
				if r.Trained && (r.Score <= 0 || r.Score > 1) {
					t.Errorf("score %v out of (0, 1]", r.Score)
				}
				m.Score(key, f)
			}
			m.Train(key)
		})
	}
	wg.Wait()
	require.LessOrEqual(t, m.Len(), 3)
}

func FuzzScore(f *testing.F) {
	forest := Fit(vectors(normal(300, 1)), 20, 64, 1)
	f.Add(27.0, 210e6, 1.5e5, 4.5e5, 6.0, 15.0, 0.05)
	f.Add(math.NaN(), math.Inf(1), -1.0, 0.0, 1e300, -1e300, math.SmallestNonzeroFloat64)
	f.Fuzz(func(t *testing.T, a, b, c, d, e, g, h float64) {
		v := Features{a, b, c, d, e, g, h}.Vector()
		s, shares := forest.Explain(v, RangeAware)
		if !(s > 0 && s <= 1) {
			t.Fatalf("score %v out of (0, 1]", s)
		}
		for _, x := range shares {
			if !(x >= 0 && x <= 1) {
				t.Fatalf("share %v out of [0, 1]", x)
			}
		}
	})
}
