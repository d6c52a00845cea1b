//go:build race

package detector

// slowdown is how much slower the race detector makes the in-process NATS
// cluster: timed bounds are multiplied by it.
const slowdown = 3
