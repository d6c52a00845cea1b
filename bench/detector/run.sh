#!/bin/sh
# Detector benchmarks: NATS-in to NATS-out throughput and publish→threat
# latency at 2,000 and 10,000 events/s. In-process NATS server (JetStream on
# disk in a temp dir), one detector replica. See README.md.
set -eu
cd "$(dirname "$0")/../../services/detector"
uptime
go test -run '^$' -bench "${BENCH:-.}" -benchtime="${BENCHTIME:-30000x}" -count="${COUNT:-1}" ./internal/detector/
uptime
