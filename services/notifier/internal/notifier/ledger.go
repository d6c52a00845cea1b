package notifier

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// LedgerBucket is the NATS KV bucket of posted threat ids.
const LedgerBucket = "whalewatch_notifier_sent"

// Ledger remembers which threats were posted, so that a threat redelivered
// after its ack was lost, to this replica or another, is not posted twice.
//
// The notifier checks Posted before sending and calls MarkPosted after the
// sink accepted. Two deliveries of one threat could still race between the
// check and the mark only if they were handled at the same time, which a
// durable consumer does not do within its ack wait.
type Ledger interface {
	Posted(ctx context.Context, id string) (bool, error)
	MarkPosted(ctx context.Context, id string) error
}

// KVLedger is a Ledger in a NATS KV bucket whose keys expire after a TTL.
type KVLedger struct{ kv jetstream.KeyValue }

// KeyValueManager is the part of JetStream OpenLedger needs.
type KeyValueManager interface {
	CreateOrUpdateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error)
}

// OpenLedger creates or updates the ledger bucket; it is idempotent, so every
// replica calls it at start.
func OpenLedger(ctx context.Context, js KeyValueManager, ttl time.Duration, replicas int) (*KVLedger, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      LedgerBucket,
		Description: "ids of the threats the whalewatch notifier posted",
		TTL:         ttl,
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("ensuring KV bucket %s: %w", LedgerBucket, err)
	}
	return &KVLedger{kv: kv}, nil
}

// Posted reports whether the threat id was marked posted within the TTL.
func (l *KVLedger) Posted(ctx context.Context, id string) (bool, error) {
	_, err := l.kv.Get(ctx, ledgerKey(id))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return false, nil
	}
	return false, fmt.Errorf("looking up %s in %s: %w", id, LedgerBucket, err)
}

// MarkPosted records that the threat id was posted.
func (l *KVLedger) MarkPosted(ctx context.Context, id string) error {
	if _, err := l.kv.Put(ctx, ledgerKey(id), []byte(time.Now().UTC().Format(time.RFC3339))); err != nil {
		return fmt.Errorf("recording %s in %s: %w", id, LedgerBucket, err)
	}
	return nil
}

// ledgerKey is id when it is a valid KV key of plain characters (NewID and
// DeriveID ids are hex), and a hash of it otherwise: ids come over the wire
// and KV keys allow only [-/_=.a-zA-Z0-9]. A hashed key contains a '.', which
// a plain one cannot, so the two never collide.
func ledgerKey(id string) string {
	plain := id != "" && len(id) <= 128
	for i := 0; plain && i < len(id); i++ {
		c := id[i]
		plain = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
	}
	if plain {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return "h." + hex.EncodeToString(sum[:])
}
