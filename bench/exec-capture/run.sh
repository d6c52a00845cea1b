#!/bin/sh
# Short-lived exec capture and exec-to-telemetry latency (issue 3).
# Needs root, the host's PID and network namespaces and a Docker engine.
# Usage: bench/exec-capture/run.sh [RUNS]   (default 1; ~1 min per run)
set -eu
cd "$(dirname "$0")/../../services/collector"
runs=${1:-1}
echo "nproc $(nproc); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
WHALEWATCH_BENCH_EXEC_CAPTURE=1 go test ./internal/collector -run '^TestExecCaptureBenchmark$' \
	-count="$runs" -v -timeout 30m | grep -E 'processes in|kernel sensor published|^(--- |ok|FAIL)'
