#!/usr/bin/env bash
# ensure-docker.sh STATE_DIR — make a Docker engine reachable for tests.
#
# Reuses a running engine. Otherwise installs Debian's docker.io (and
# busybox-static, which the test images are built from) when missing, starts
# dockerd in the background with the vfs storage driver, and waits until it
# answers. When it started dockerd it writes its PID to STATE_DIR/dockerd.pid,
# so that stop-docker.sh stops only what this script started.
set -euo pipefail
state=${1:?usage: ensure-docker.sh STATE_DIR}
mkdir -p "$state"

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "ensure-docker: need ${need[*]}; run as root or install them: apt-get install -y ${need[*]}" >&2
    exit 1
  fi
  echo "ensure-docker: installing ${need[*]}" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if docker info >/dev/null 2>&1; then
  echo "ensure-docker: reusing the running Docker engine" >&2
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "ensure-docker: no Docker engine answers and starting one needs root (sudo dockerd --storage-driver=vfs &)" >&2
  exit 1
fi

echo "ensure-docker: starting dockerd (vfs storage driver)" >&2
nohup dockerd --storage-driver=vfs >"$state/dockerd.log" 2>&1 &
echo $! >"$state/dockerd.pid"
for _ in $(seq 1 120); do
  if docker info >/dev/null 2>&1; then
    echo "ensure-docker: dockerd is up (pid $(cat "$state/dockerd.pid"))" >&2
    exit 0
  fi
  if ! kill -0 "$(cat "$state/dockerd.pid")" 2>/dev/null; then
    echo "ensure-docker: dockerd exited; its log:" >&2
    tail -20 "$state/dockerd.log" >&2
    exit 1
  fi
  sleep 0.5
done
echo "ensure-docker: dockerd did not answer within 60 s; see $state/dockerd.log" >&2
exit 1
