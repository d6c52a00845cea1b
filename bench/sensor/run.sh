#!/usr/bin/env bash
# Kernel sensor under load: execs and file writes in a busybox container as fast
# as it makes them, ring-buffer drops, CPU per 1,000 events (kernel programs via
# kernel.bpf_stats_enabled, the reader via its process's CPU time), kernel-to-emit
# latency of file writes and connects, and the user-space decode+build cost.
# As root, with a Docker engine. See README.md.
#   bench/sensor/run.sh [SECONDS_PER_PHASE] [WORKERS]
set -euo pipefail
cd "$(dirname "$0")/../../services/collector"
echo "# $(date -u +%FT%TZ) $(uptime)"
WHALEWATCH_BENCH_SENSOR=1 WHALEWATCH_BENCH_SECONDS="${1:-5}" WHALEWATCH_BENCH_LOOPS="${2:-8}" \
	go test ./internal/sensor -run '^TestSensorLoadBenchmark$' -count=1 -v -timeout 20m | grep -E 'sensor_bench_test|PASS|FAIL|ok'
go test ./internal/sensor -run '^$' -bench BenchmarkDecodeBuild -benchtime 20000x -count 3 | grep -E '^Benchmark|ok'
echo "# $(date -u +%FT%TZ) $(uptime)"
