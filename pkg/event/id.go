package event

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
)

// NewID returns a random event id: 32 lowercase hex digits (128 bits).
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b[:])
}

// DeriveID returns an id determined by parts, in NewID's format. Use it for
// anything that may be produced twice from the same input (a Docker event read
// again after a reconnect, a threat from a redelivered telemetry message), so
// that JetStream's duplicate detection and Elasticsearch's _id keep one copy.
func DeriveID(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0}) // separator: ("ab","c") and ("a","bc") differ
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}
