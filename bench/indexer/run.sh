#!/bin/sh
# Indexer throughput, NATS to a stand-in Elasticsearch that answers at once:
# 100,000 pre-published ~1 KB events (WHALEWATCH_BENCH_DOCS), docs/s and CPU
# seconds per 100,000 documents. See README.md.
set -eu
cd "$(dirname "$0")/../../services/indexer"
uptime
go test -run '^$' -bench BenchmarkThroughput -benchtime=1x -count="${COUNT:-3}" ./internal/indexer/
uptime
