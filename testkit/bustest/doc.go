// Package bustest holds the integration tests of pkg/bus against an
// in-process NATS server. They live here rather than beside pkg/bus so that
// the NATS server, a test-only dependency, stays out of pkg/go.mod.
package bustest
