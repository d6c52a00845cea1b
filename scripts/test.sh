#!/usr/bin/env bash
# make test: every test, unit to end-to-end, on a fresh machine of this kind.
#
# Installs and starts what the tests need when it is missing (Debian's docker.io
# and busybox-static, dockerd with the vfs driver; the NATS server is built from
# source), runs gofmt/vet and every module's tests, and stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
state=$root/.run/test
mkdir -p "$state"

started_docker=0
cleanup() {
  # Containers a crashed test may have left behind (tests remove their own).
  if docker info >/dev/null 2>&1; then
    left=$(docker ps -aq --filter label=whalewatch.test 2>/dev/null || true)
    [ -z "$left" ] || docker rm -f -v $left >/dev/null 2>&1 || true
  fi
  [ "$started_docker" = 1 ] && scripts/stop-docker.sh "$state"
  return 0
}
trap cleanup EXIT

command -v go >/dev/null || { echo "make test: Go is not installed (want go 1.26)"; exit 1; }
[ -f "$state/dockerd.pid" ] && rm -f "$state/dockerd.pid"
scripts/ensure-docker.sh "$state"
[ -f "$state/dockerd.pid" ] && started_docker=1

echo "== build"
make --no-print-directory build
echo "== lint (gofmt, go vet)"
make --no-print-directory lint
if command -v docker-compose >/dev/null; then
  echo "== docker-compose.yml"
  make --no-print-directory compose-check
fi

echo "== go test"
export WHALEWATCH_REQUIRE_DOCKER=1
export WHALEWATCH_BIN=$root/bin
# With the race detector (it needs cgo); the end-to-end test starts real containers.
CGO_ENABLED=1 go test -race -count=1 -timeout 10m ${GOTESTFLAGS:-} $(make --no-print-directory packages) 2>&1 | tee "$state/go-test.log"
status=${PIPESTATUS[0]}
pass=$(grep -c '^ok ' "$state/go-test.log" || true)
fail=$(grep -c '^FAIL\s' "$state/go-test.log" || true)
echo "packages: $pass passed, $fail failed"
exit "$status"
