#!/usr/bin/env bash
# make images: whalewatch/<service>:dev images FROM scratch, from the binaries in bin/.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${WHALEWATCH_TAG:-dev}
ca=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca" ] || { echo "images: $ca missing (apt-get install ca-certificates)"; exit 1; }
cp "$ca" bin/ca-certificates.crt
for s in collector detector indexer notifier; do
  docker build --network none -q -f deploy/Dockerfile --build-arg SERVICE="$s" -t "whalewatch/$s:$tag" . >/dev/null
  echo "built whalewatch/$s:$tag"
done
