// Package claimtest holds the integration tests of pkg/claim against an
// in-process NATS server, here so that the server stays out of pkg/go.mod.
package claimtest
