#!/usr/bin/env bash
# What the Docker engine spends on container stats: one stats stream per
# container (the engine pushes a sample every second) against one one-shot
# request per container every INTERVAL seconds (what the collector's resource
# monitor does), with N idle containers. See README.md.
# Usage: N=20 WINDOW=20 ROUNDS=3 INTERVAL=10 bench/collector-stats-mode/run.sh
set -euo pipefail

N=${N:-20}
WINDOW=${WINDOW:-40}
INTERVAL=${INTERVAL:-10}
ROUNDS=${ROUNDS:-3}
IMAGE=${IMAGE:-whalewatch-test/busybox:1}
SOCK=${SOCK:-/var/run/docker.sock}
LABEL="whalewatch.bench=collector-stats-mode-$$"
HZ=$(getconf CLK_TCK)
PIDS=()

cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
	local ids
	ids=$(docker ps -aq --filter "label=$LABEL")
	if [ -n "$ids" ]; then docker rm -f $ids >/dev/null; fi
}
trap cleanup EXIT

docker image inspect "$IMAGE" >/dev/null 2>&1 || {
	echo "missing $IMAGE: go test ./testkit/dockertest builds it" >&2; exit 1; }

ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12+$13+$14+$15}'; }
engine_pids() { { pgrep -x dockerd; pgrep -x containerd; pgrep -f containerd-shim; } | sort -u; }
engine_ticks() { local t=0 p; for p in $(engine_pids); do t=$((t + $(ticks "$p" 2>/dev/null || echo 0))); done; echo "$t"; }
pct() { awk -v t="$1" -v hz="$HZ" -v w="$2" 'BEGIN{printf "%.2f", 100*t/hz/w}'; }
measure() { local e0 e1; e0=$(engine_ticks); sleep "$WINDOW"; e1=$(engine_ticks); pct $((e1 - e0)) "$WINDOW"; }

echo "# collector-stats-mode: N=$N window=${WINDOW}s interval=${INTERVAL}s, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
for i in $(seq "$N"); do
	docker run -d --network none --label "$LABEL" "$IMAGE" sleep 3600 >/dev/null
done
IDS=$(docker ps -q --no-trunc --filter "label=$LABEL")
sleep 5

# The three phases are interleaved over ROUNDS rounds, so that drift in the
# machine's other load spreads over all three.
stream_on() {
	for id in $IDS; do
		curl -sN --unix-socket "$SOCK" -o /dev/null "http://docker/containers/$id/stats?stream=1" &
		PIDS+=($!)
	done
}
oneshot_on() {
	local gap
	gap=$(awk -v i="$INTERVAL" -v n="$N" 'BEGIN{printf "%.3f", i/n}')
	(
		while :; do
			for id in $IDS; do
				curl -s --unix-socket "$SOCK" -o /dev/null "http://docker/containers/$id/stats?stream=false&one-shot=true" &
				sleep "$gap"
			done
		done
	) &
	PIDS+=($!)
}
all_off() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
	PIDS=()
	sleep 3
}
declare -A SUM=([baseline]=0 [stream]=0 [oneshot]=0)
for r in $(seq "$ROUNDS"); do
	for phase in baseline stream oneshot; do
		case $phase in
		stream) stream_on ;;
		oneshot) oneshot_on ;;
		esac
		sleep 2
		v=$(measure)
		all_off
		echo "round $r $phase engine_cpu% $v"
		SUM[$phase]=$(awk -v a="${SUM[$phase]}" -v b="$v" 'BEGIN{print a+b}')
	done
done
for phase in baseline stream oneshot; do
	echo "mean $phase engine_cpu% $(awk -v s="${SUM[$phase]}" -v n="$ROUNDS" 'BEGIN{printf "%.2f", s/n}')"
done
echo "# done: load $(cut -d' ' -f1-3 /proc/loadavg)"
