package bus

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

// fakeStreams is a JetStream that holds stream configurations and may refuse
// creates and updates as a server refuses an identity's publish: the request
// is never answered, so the requester times out.
type fakeStreams struct {
	mu                         sync.Mutex
	streams                    map[string]jetstream.StreamConfig
	refuseCreate, refuseUpdate bool
	readErr                    error
	creates, updates           int
}

type fakeStream struct {
	jetstream.Stream
	cfg jetstream.StreamConfig
}

func (s fakeStream) CachedInfo() *jetstream.StreamInfo { return &jetstream.StreamInfo{Config: s.cfg} }

func (f *fakeStreams) Stream(_ context.Context, name string) (jetstream.Stream, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.readErr != nil {
		return nil, f.readErr
	}
	cfg, ok := f.streams[name]
	if !ok {
		return nil, jetstream.ErrStreamNotFound
	}
	return fakeStream{cfg: cfg}, nil
}

func (f *fakeStreams) CreateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.creates++
	if f.refuseCreate {
		return nil, context.DeadlineExceeded
	}
	if _, ok := f.streams[cfg.Name]; ok {
		return nil, jetstream.ErrStreamNameAlreadyInUse
	}
	f.streams[cfg.Name] = cfg
	return fakeStream{cfg: cfg}, nil
}

func (f *fakeStreams) UpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.updates++
	if f.refuseUpdate {
		return nil, context.DeadlineExceeded
	}
	if _, ok := f.streams[cfg.Name]; !ok {
		return nil, jetstream.ErrStreamNotFound
	}
	f.streams[cfg.Name] = cfg
	return fakeStream{cfg: cfg}, nil
}

func testStreams() StreamsConfig {
	l := Limits{MaxAge: time.Hour, MaxBytes: 1 << 20}
	return StreamsConfig{Telemetry: l, Threats: l, Actions: l, DeadLetter: l, Replicas: 1, Duplicates: time.Minute}
}

// TestEnsureStreamsUnderRefusedPermissions: a service whose identity may only
// read streams starts when the setup job made them (with other settings: a
// warning naming what differs), and fails naming the stream and the setup job
// when it did not; with permission, missing and different streams are made
// as the flags say (make run, no authentication).
func TestEnsureStreamsUnderRefusedPermissions(t *testing.T) {
	t.Parallel()
	want := testStreams()
	other := testStreams()
	other.Threats.MaxAge = 2 * time.Hour
	tests := []struct {
		name                       string
		existing                   *StreamsConfig // made before, by the setup job
		refuseCreate, refuseUpdate bool
		readErr                    error
		wantErr                    []string // substrings of the error; nil: success
		wantWarn                   []string // substrings of the log; nil: no warning
		wantCreates, wantUpdates   int
		wantMaxAge                 time.Duration // of the threats stream afterwards
	}{
		{name: "allowed, nothing there: created", wantCreates: 4, wantMaxAge: time.Hour},
		{name: "allowed, other settings: updated", existing: &other, wantUpdates: 1, wantMaxAge: time.Hour},
		{name: "read only, as wanted: nothing asked", existing: &want, refuseCreate: true, refuseUpdate: true, wantMaxAge: time.Hour},
		{name: "read only, other settings: used as they are, with a warning", existing: &other, refuseCreate: true, refuseUpdate: true,
			wantUpdates: 1, wantMaxAge: 2 * time.Hour,
			wantWarn: []string{"level=WARN", "stream=WHALEWATCH_THREATS", "max_age 2h0m0s (want 1h0m0s)", "setup job"}},
		{name: "read only, nothing there: error naming the stream and the setup job", refuseCreate: true, refuseUpdate: true,
			wantCreates: 4, wantErr: []string{"stream WHALEWATCH_TELEMETRY does not exist", "stream WHALEWATCH_THREATS does not exist", "setup job with the setup identity"}},
		{name: "NATS does not answer: error, nothing asked", readErr: context.DeadlineExceeded,
			wantErr: []string{"reading stream WHALEWATCH_THREATS"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			js := &fakeStreams{streams: map[string]jetstream.StreamConfig{}}
			if tt.existing != nil {
				for _, s := range tt.existing.Specs() {
					js.streams[s.Name] = s
				}
			}
			js.refuseCreate, js.refuseUpdate, js.readErr = tt.refuseCreate, tt.refuseUpdate, tt.readErr
			var logs bytes.Buffer
			c := want
			c.Log = slog.New(slog.NewTextHandler(&logs, nil))
			err := ensureStreams(context.Background(), js, c, 50*time.Millisecond)
			if tt.wantErr == nil {
				require.NoError(t, err)
			} else {
				require.Error(t, err)
				for _, s := range tt.wantErr {
					require.ErrorContains(t, err, s)
				}
			}
			if tt.wantWarn == nil {
				require.Empty(t, logs.String())
			}
			for _, s := range tt.wantWarn {
				require.Contains(t, logs.String(), s)
			}
			require.Equal(t, tt.wantCreates, js.creates, "creates")
			require.Equal(t, tt.wantUpdates, js.updates, "updates")
			if tt.wantMaxAge != 0 {
				require.Equal(t, tt.wantMaxAge, js.streams[StreamThreats].MaxAge)
			}
		})
	}
}

func TestStreamDiffNamesEverySetting(t *testing.T) {
	t.Parallel()
	c := testStreams()
	a := c.Specs()[0]
	require.Empty(t, streamDiff(a, a))
	b := a
	b.Subjects, b.Replicas, b.MaxBytes = []string{"x.>"}, 3, 5
	require.Equal(t, "subjects [x.>] (want [whalewatch.telemetry.>]), replicas 3 (want 1), max_bytes 5 (want 1048576)", streamDiff(b, a))
	require.False(t, sameStream(b, a))
}
