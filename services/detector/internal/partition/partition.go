// Package partition spreads the detector's work over replicas so that all
// telemetry of one container is evaluated by one replica at a time, which
// stateful detection needs.
//
// Layout. The detector owns a stream, Stream, that sources the telemetry
// stream through a subject transform adding a partition token computed by
// the server from the container id:
//
//	whalewatch.telemetry.<host>.<container-id>.<kind>
//	  → whalewatch.detector.<partition>.<host>.<container-id>.<kind>
//	    partition = fnv32a(<container-id token>) mod Count   (NATS partition())
//
// It is a work queue: a message is deleted once its partition's consumer
// acked it, so the copy costs only the backlog. The telemetry stream and its
// subjects are unchanged (the indexer and other readers do not see this).
// Each partition has one durable pull consumer, Durable(prefix, p). The
// stream's leader runs the source; WatchSource restarts it (by moving the
// leader) when nats-server's own retry would take half a minute or more.
//
// Ownership. Live replicas and partition locks are keys of the KV bucket
// LeaseBucket whose TTL is the lease TTL:
//
//	members.<replica-id>   heartbeat, refreshed every TTL/4
//	locks.<partition>      the replica consuming it; created with Create
//	                       (fails while another holds it), renewed with a
//	                       compare-and-set Update, deleted on release
//
// Each replica computes the owner of every partition by rendezvous hashing
// over the live members, releases the partitions it holds but no longer
// owns (stops its consumer, lets it finish what it was handed, then deletes
// the lock) and acquires those it owns whose lock is free. A replica that
// cannot renew a lock stops consuming that partition at once. So at most one
// replica consumes a partition at any time, except that a replica stalled
// for longer than the TTL (GC, VM freeze) may finish the message it holds
// after its lock expired.
//
// Bounds. A dead replica's member key and locks expire within the TTL; its
// partitions are acquired by the others at their next tick (TTL/4), i.e.
// within 1.25 × TTL; the messages it had been handed but not acked are
// redelivered after the consumer's ack wait. Per-container windows of moved
// partitions are lost (they lived in the dead replica's memory) and start
// empty at the new owner; baselines live in KV and are not lost. Nothing is
// counted twice: a partition released on purpose is drained first, and the
// new owner forgets anything it held about the partition before.
package partition

import (
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/whalewatch/whalewatch/pkg/event"
	"github.com/whalewatch/whalewatch/pkg/subject"
)

// Stream is the detector's partitioned copy of the telemetry stream.
const Stream = "WHALEWATCH_DETECTOR_PARTITIONS"

// Prefix is the first tokens of the partitioned subjects.
const Prefix = subject.Root + ".detector"

// LeaseBucket is the KV bucket of replica heartbeats and partition locks.
const LeaseBucket = "whalewatch_detector_leases"

// Config is the partitioning configuration.
type Config struct {
	// Count is the number of partitions; 0 turns partitioning off (one
	// shared consumer on the telemetry stream: fine for one replica).
	Count int
	// LeaseTTL is how long a dead replica's partitions stay unowned.
	LeaseTTL time.Duration
	// ReplicaID names this replica in the lease bucket; empty means the
	// hostname and a random suffix.
	ReplicaID string
}

// RegisterFlags registers the partitioning flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.IntVar(&c.Count, "partitions", 0, "telemetry partitions shared by detector replicas (0: off, one shared consumer; set it, e.g. 16, to run several replicas with stateful rules; never change it on a running deployment without draining)")
	fs.DurationVar(&c.LeaseTTL, "partition-lease-ttl", 10*time.Second, "partition lease TTL: a dead replica's partitions move to the others within 1.25 times this")
	fs.StringVar(&c.ReplicaID, "replica-id", "", "name of this replica in the lease bucket (default: hostname and a random suffix)")
}

// Validate checks c.
func (c *Config) Validate() error {
	if c.Count < 0 || c.Count > 1024 {
		return errors.New("partitions must be between 0 and 1024")
	}
	if c.LeaseTTL < time.Second {
		return errors.New("partition-lease-ttl must be at least 1s")
	}
	return nil
}

// ID returns the replica id to use: ReplicaID made a valid key token, or
// the hostname with a random suffix.
func (c *Config) ID() string {
	id := c.ReplicaID
	if id == "" {
		h, _ := os.Hostname()
		id = h + "-" + event.NewID()[:8]
	}
	var b strings.Builder
	for _, r := range event.Truncate(id, 64) {
		if r < 0x80 && (r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

// Of is the partition of a container id, as the server computes it.
func Of(containerID string, count int) int {
	h := fnv.New32a()
	h.Write([]byte(subject.Token(containerID)))
	return int(h.Sum32() % uint32(count))
}

// Subject is the filter of partition p's messages.
func Subject(p int) string { return Prefix + "." + strconv.Itoa(p) + ".>" }

// Durable is the consumer name of partition p.
func Durable(prefix string, p int) string { return fmt.Sprintf("%s-p%d", prefix, p) }

// Owner returns which of members owns partition p (rendezvous hashing: a
// member's leaving moves only its own partitions). Empty without members.
func Owner(members []string, p int) string {
	best, bestScore := "", uint64(0)
	for _, m := range members {
		h := fnv.New64a()
		h.Write([]byte(m))
		h.Write([]byte{0})
		h.Write([]byte(strconv.Itoa(p)))
		// fnv alone mixes the last bytes poorly; finish with splitmix64.
		s := h.Sum64()
		s ^= s >> 30
		s *= 0xbf58476d1ce4e5b9
		s ^= s >> 27
		s *= 0x94d049bb133111eb
		s ^= s >> 31
		if best == "" || s > bestScore || s == bestScore && m < best {
			best, bestScore = m, s
		}
	}
	return best
}
