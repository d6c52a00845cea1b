package anomaly

import (
	"testing"
)

func benchForest(b *testing.B) (*Forest, []Vector) {
	b.Helper()
	return Fit(vectors(normal(2048, 1)), 100, 256, 1), vectors(normal(1024, 2))
}

func BenchmarkScore(b *testing.B) {
	for _, mode := range []struct {
		name string
		m    Scoring
	}{{"RangeAware", RangeAware}, {"Vanilla", Vanilla}} {
		b.Run(mode.name, func(b *testing.B) {
			f, probe := benchForest(b)
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				f.Score(probe[i%len(probe)], mode.m)
			}
		})
	}
}

func BenchmarkExplain(b *testing.B) {
	f, probe := benchForest(b)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		f.Explain(probe[i%len(probe)], RangeAware)
	}
}

// BenchmarkFit is one training: 100 trees on subsamples of 256 of a full
// window of 2048 vectors.
func BenchmarkFit(b *testing.B) {
	data := vectors(normal(2048, 1))
	b.ReportAllocs()
	var f *Forest
	for i := 0; b.Loop(); i++ {
		f = Fit(data, 100, 256, uint64(i))
	}
	b.ReportMetric(float64(f.sizeBytes()), "forest-bytes")
}

// BenchmarkObserve is the steady state of one key with the default
// configuration: score, push into the window, and every 256th call a
// training, so ns/op includes the amortised training cost.
func BenchmarkObserve(b *testing.B) {
	m, err := New(Config{})
	if err != nil {
		b.Fatal(err)
	}
	data := normal(4096, 1)
	for _, f := range data[:2048] {
		m.Observe("img", f)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		m.Observe("img", data[i%len(data)])
	}
}
