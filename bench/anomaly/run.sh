#!/usr/bin/env bash
# Validates the detector's Isolation Forest against scikit-learn's.
#
#   bench/anomaly/run.sh [OUT_DIR]
#
# 1. generates the synthetic data set and the Go model's scores and timings
#    (TestExportForSklearn, skipped in `make test`),
# 2. runs scikit-learn on the same data and prints ROC AUC, thresholds,
#    explanation accuracy and timings (compare.py; also OUT_DIR/results.json),
# 3. runs the package's Go benchmarks.
#
# Needs Debian's scikit-learn for /usr/bin/python3: apt-get install -y python3-sklearn
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-/tmp/whalewatch-anomaly-bench}
py=/usr/bin/python3

if ! "$py" -c 'import sklearn' 2>/dev/null; then
	echo "scikit-learn missing for $py: apt-get install -y python3-sklearn" >&2
	exit 1
fi
mkdir -p "$out"
echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"

cd "$root/services/detector"
WHALEWATCH_ANOMALY_BENCH_DIR="$out" go test -count=1 -run '^TestExportForSklearn$' ./internal/anomaly/ >/dev/null
"$py" "$root/bench/anomaly/compare.py" "$out"

echo
echo "Go benchmarks (go test -run '^\$' -bench . -benchtime 3000x ./internal/anomaly/):"
echo
go test -run '^$' -bench . -benchtime 3000x ./internal/anomaly/ | grep -E '^Benchmark'
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
