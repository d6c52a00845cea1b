#!/usr/bin/env bash
# The Docker engine's CPU with N idle containers, in windows without
# whalewatch and with what `make run` starts (NATS server, detector, notifier,
# collector), alternated ROUNDS times and ending without: the engine's idle
# CPU drifts between windows, so each window with whalewatch is compared
# with the mean of the windows either side. Prints the four processes' CPU
# too. Usage: N=200 ROUNDS=3 bench/collector-scale/engine-ab.sh (after make
# build; BIN=<dir> for another build).
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-200}
ROUNDS=${ROUNDS:-3}
WINDOW=${WINDOW:-60}
WARMUP=${WARMUP:-60}
BIN=${BIN:-bin}
IMAGE=${IMAGE:-whalewatch-test/busybox:1}
NATS_PORT=${NATS_PORT:-14232}
HTTP_PORT=${HTTP_PORT:-19111}
LABEL="whalewatch.bench=engine-ab-$$"
HZ=$(getconf CLK_TCK)
TMP=$(mktemp -d)
PIDS=()

stop_all() {
	local p
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	PIDS=()
}
cleanup() {
	stop_all
	local ids
	ids=$(docker ps -aq --filter "label=$LABEL")
	if [ -n "$ids" ]; then docker rm -f $ids >/dev/null; fi
	rm -rf "$TMP"
}
trap cleanup EXIT

ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12+$13+$14+$15}'; }
engine_pids() { { pgrep -x dockerd; pgrep -x containerd; pgrep -f containerd-shim; } | sort -u; }
engine_ticks() { local t=0 p; for p in $(engine_pids); do t=$((t + $(ticks "$p" 2>/dev/null || echo 0))); done; echo "$t"; }
sum_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(ticks "$p"))); done; echo "$t"; }
pct() { awk -v t="$1" -v hz="$HZ" -v w="$WINDOW" 'BEGIN{printf "%.2f", 100*t/hz/w}'; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

start_all() {
	rm -rf "$TMP/js"
	"$BIN/nats-server" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$TMP/js" >"$TMP/nats.log" 2>&1 &
	PIDS+=($!)
	sleep 1
	local url="nats://127.0.0.1:$NATS_PORT"
	"$BIN/detector" -nats-url "$url" -http-addr "127.0.0.1:$((HTTP_PORT + 1))" -log-level warn 2>"$TMP/detector.log" &
	PIDS+=($!)
	"$BIN/notifier" -console -nats-url "$url" -http-addr "127.0.0.1:$((HTTP_PORT + 2))" -log-level warn >/dev/null 2>"$TMP/notifier.log" &
	PIDS+=($!)
	"$BIN/collector" -nats-url "$url" -http-addr "127.0.0.1:$HTTP_PORT" -host-name bench -log-level warn 2>"$TMP/collector.log" &
	PIDS+=($!)
}

off() {
	local e0 e1
	e0=$(engine_ticks); sleep "$WINDOW"; e1=$(engine_ticks)
	printf '%-8s engine %6s%%  %26s  load %s\n' without "$(pct $((e1 - e0)))" "" "$(load)"
}

echo "# engine-ab: N=$N window=${WINDOW}s, $(nproc) cores, load $(load), $(date -u +%FT%TZ)"
for _ in $(seq "$N"); do docker run -d --network none --label "$LABEL" "$IMAGE" sleep 36000 >/dev/null; done
sleep "$WARMUP"
for _ in $(seq "$ROUNDS"); do
	off
	start_all
	sleep "$WARMUP"
	s0=$(sum_ticks "${PIDS[@]}"); e0=$(engine_ticks); sleep "$WINDOW"; e1=$(engine_ticks); s1=$(sum_ticks "${PIDS[@]}")
	printf '%-8s engine %6s%%  the four processes %6s%%  load %s\n' with "$(pct $((e1 - e0)))" "$(pct $((s1 - s0)))" "$(load)"
	stop_all
	sleep 10
done
off
