#!/usr/bin/env bash
# make bench: the benchmarks behind docs/PERFORMANCE.md. Results go to
# bench/results/<date>.txt (not committed). Needs what make test needs.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
state=$root/.run/bench
mkdir -p "$state" bench/results
started=0
trap '[ "$started" = 1 ] && scripts/stop-docker.sh "$state"' EXIT
scripts/ensure-docker.sh "$state"
[ -f "$state/dockerd.pid" ] && started=1
make --no-print-directory build
out=bench/results/$(date -u +%Y%m%dT%H%M%SZ).txt
export WHALEWATCH_BIN=$root/bin WHALEWATCH_REQUIRE_DOCKER=1
{
  echo "# $(date -u) $(uname -m) $(nproc) cores, $(go version)"
  go test -run '^$' -bench . -benchmem -count "${BENCH_COUNT:-5}" $(make --no-print-directory packages | sed 's| ./testkit/...||')
  go test -run '^$' -bench ExecToAlert -benchtime "${E2E_BENCHTIME:-30x}" -count 1 ./testkit/e2e/
} 2>&1 | tee "$out"
echo "results: $out"
