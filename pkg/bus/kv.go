package bus

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// KeyValueManager is the part of JetStream EnsureKeyValue and OpenKeyValue
// need.
type KeyValueManager interface {
	KeyValue(ctx context.Context, bucket string) (jetstream.KeyValue, error)
	CreateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error)
	CreateOrUpdateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error)
}

// EnsureKeyValue opens the KV bucket cfg.Bucket, creating it or updating it
// to cfg's history, TTL, storage and replicas, as EnsureStreams does a
// stream: the bucket is read first (most starts find it as wanted), a create
// or update gets a deadline sized for a busy meta leader (APITimeout,
// doubling to MaxAPITimeout on each retry), and a request that failed is
// confirmed by reading back, so another replica's create with the same
// configuration, or a create whose answer was lost, is success. It retries
// until it succeeds or ctx ends; onErr (may be nil) sees each failed try.
func EnsureKeyValue(ctx context.Context, js KeyValueManager, cfg jetstream.KeyValueConfig, onErr func(error)) (jetstream.KeyValue, error) {
	return ensureKeyValue(ctx, js, cfg, true, onErr)
}

// OpenKeyValue is EnsureKeyValue for a bucket whose configuration belongs
// to its operator once created (pkg/claim's TTL): an existing bucket is
// used as it is, cfg applies only when the bucket is created.
func OpenKeyValue(ctx context.Context, js KeyValueManager, cfg jetstream.KeyValueConfig, onErr func(error)) (jetstream.KeyValue, error) {
	return ensureKeyValue(ctx, js, cfg, false, onErr)
}

func ensureKeyValue(ctx context.Context, js KeyValueManager, cfg jetstream.KeyValueConfig, update bool, onErr func(error)) (jetstream.KeyValue, error) {
	var kv jetstream.KeyValue
	timeout := APITimeout
	is := func() bool {
		k, ok := keyValueIs(ctx, js, cfg, update, timeout)
		if ok {
			kv = k
		}
		return ok
	}
	err := retry(ctx, func() error {
		defer func() { timeout = min(2*timeout, MaxAPITimeout) }()
		if is() {
			return nil
		}
		actx, cancel := context.WithTimeout(ctx, timeout)
		create := js.CreateOrUpdateKeyValue
		if !update { // never touch an existing bucket whose read timed out
			create = js.CreateKeyValue
		}
		k, err := create(actx, cfg)
		cancel()
		if err == nil {
			kv = k
			return nil
		}
		if is() {
			return nil
		}
		return fmt.Errorf("ensuring KV bucket %s: %w", cfg.Bucket, err)
	}, onErr)
	return kv, err
}

// keyValueIs opens the bucket and reports whether it exists (with what cfg
// asks, when match).
func keyValueIs(ctx context.Context, js KeyValueManager, cfg jetstream.KeyValueConfig, match bool, timeout time.Duration) (jetstream.KeyValue, bool) {
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	kv, err := js.KeyValue(actx, cfg.Bucket)
	if err != nil {
		return nil, false
	}
	if !match {
		return kv, true
	}
	st, err := kv.Status(actx)
	return kv, err == nil && sameKeyValue(st.Config(), cfg)
}

// sameKeyValue reports whether a bucket's configuration has what cfg asks
// (zero History and Replicas mean the server's default, 1).
func sameKeyValue(got, cfg jetstream.KeyValueConfig) bool {
	return got.History == max(cfg.History, 1) && got.TTL == cfg.TTL && got.Storage == cfg.Storage &&
		got.Replicas == max(cfg.Replicas, 1)
}
