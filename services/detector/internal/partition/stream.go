package partition

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/whalewatch/whalewatch/pkg/bus"
	"github.com/whalewatch/whalewatch/pkg/subject"
)

// StreamManager is the part of JetStream EnsureStream needs.
type StreamManager interface {
	Stream(ctx context.Context, name string) (jetstream.Stream, error)
	CreateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error)
}

// transform is the subject transform from telemetry to partitioned subjects.
func transform(count int) jetstream.SubjectTransformConfig {
	return jetstream.SubjectTransformConfig{
		Source:      subject.TelemetryPrefix + ".*.*.*",
		Destination: fmt.Sprintf("%s.{{partition(%d,2)}}.{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}", Prefix, count),
	}
}

// EnsureStream creates the partitioned stream if it does not exist, sourcing
// telemetry published from now on (not the telemetry stream's history, which
// the single-consumer mode may already have evaluated). An existing stream
// with another partition count is an error: changing the count would move
// containers between partitions while their backlog is in flight.
func EnsureStream(ctx context.Context, js StreamManager, count int, cfg bus.StreamsConfig) error {
	st, err := js.Stream(ctx, Stream)
	if err == nil {
		info, err := st.Info(ctx)
		if err != nil {
			return fmt.Errorf("stream %s: %w", Stream, err)
		}
		want := transform(count)
		for _, s := range info.Config.Sources {
			for _, tr := range s.SubjectTransforms {
				if tr != want {
					return fmt.Errorf("stream %s partitions telemetry as %q, not %q: drain it and delete it to change the partition count",
						Stream, tr.Destination, want.Destination)
				}
			}
		}
		return nil
	}
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("stream %s: %w", Stream, err)
	}
	tel, err := js.Stream(ctx, bus.StreamTelemetry)
	if err != nil {
		return fmt.Errorf("stream %s: %w", bus.StreamTelemetry, err)
	}
	info, err := tel.Info(ctx)
	if err != nil {
		return fmt.Errorf("stream %s: %w", bus.StreamTelemetry, err)
	}
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{
		Name:        Stream,
		Description: "whalewatch detector: telemetry partitioned by container (see services/detector/README.md)",
		Sources: []*jetstream.StreamSource{{
			Name:              bus.StreamTelemetry,
			OptStartSeq:       info.State.LastSeq + 1,
			SubjectTransforms: []jetstream.SubjectTransformConfig{transform(count)},
		}},
		Retention:  jetstream.WorkQueuePolicy,
		Discard:    jetstream.DiscardOld,
		Storage:    jetstream.FileStorage,
		MaxAge:     cfg.Telemetry.MaxAge,
		MaxBytes:   cfg.Telemetry.MaxBytes,
		MaxMsgs:    -1,
		Replicas:   cfg.Replicas,
		Duplicates: cfg.Duplicates,
	})
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return EnsureStream(ctx, js, count, cfg) // another replica was first
	}
	if err != nil {
		return fmt.Errorf("creating stream %s: %w", Stream, err)
	}
	return nil
}
