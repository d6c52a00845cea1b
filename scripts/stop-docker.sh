#!/usr/bin/env bash
# stop-docker.sh STATE_DIR — stop the dockerd that ensure-docker.sh started, if any.
set -uo pipefail
state=${1:?usage: stop-docker.sh STATE_DIR}
pidfile="$state/dockerd.pid"
[ -f "$pidfile" ] || exit 0
pid=$(cat "$pidfile")
if kill -0 "$pid" 2>/dev/null; then
  kill -TERM "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
fi
rm -f "$pidfile"
