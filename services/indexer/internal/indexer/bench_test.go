package indexer

import (
	"context"
	"testing"

	"github.com/whalewatch/whalewatch/pkg/event"
)

// BenchmarkSink compares one _bulk request per batch (bulk) with one request
// per document (single), through the same sink and stub; compare their
// ns/doc. Run: go test -run '^$' -bench BenchmarkSink ./internal/indexer
func BenchmarkSink(b *testing.B) {
	const batchSize = 100
	s, es := newESSinkUnderTest(b)
	ctx := context.Background()
	events := make([]*event.Event, batchSize)
	for i := range events {
		events[i] = telemetry(event.Telemetries[i%len(event.Telemetries)])
	}
	docs := docsOf(b, events...)
	check := func(b *testing.B, errs []error) {
		for _, err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	variants := []struct {
		name  string
		write func(b *testing.B)
	}{
		{"bulk", func(b *testing.B) { check(b, s.Write(ctx, docs)) }},
		{"single", func(b *testing.B) {
			for i := range docs {
				check(b, s.Write(ctx, docs[i:i+1]))
			}
		}},
	}
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				for i := range docs {
					docs[i].ID = event.NewID()
				}
				v.write(b)
				es.Reset() // keep the stub's memory flat
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batchSize), "ns/doc")
		})
	}
}
