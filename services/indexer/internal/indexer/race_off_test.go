//go:build !race

package indexer

// slowdown is how much slower the race detector makes the in-process NATS
// cluster and the indexer: the margins of timed bounds are multiplied by it.
const slowdown = 1
