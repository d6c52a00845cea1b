// Package composetest checks the compose files against what the services
// really do: the Docker socket proxy's allow-list against the Engine API calls
// the collector binary makes (recorded through a proxy of our own in front of
// the engine), and the collector-only file against the main one. The smoke
// test of the whole stack as containers is in smoke_test.go (make
// test-compose).
package composetest
