#!/usr/bin/env bash
# Collector CPU and memory with N idle containers, beside the Docker engine's
# CPU with no collector (baseline), with the collector, and with a loop that
# asks `docker top` of every container once a second (the seed's approach).
# See README.md. Usage: N=50 WINDOW=60 bench/collector-scale/run.sh
#
# VARIANTS: collector flag sets measured one after the other, separated by
# ';' (the first is usually empty: the defaults), e.g.
#   VARIANTS=';-process-source docker-top;-process-poll-interval 5s'
# COLLECTORS: collector binaries compared in the same run, name=path
# separated by ';' (default: bin/collector), each run with every variant, e.g.
#   COLLECTORS='main=/tmp/main-bin/collector;branch=bin/collector'
# SKIP_TOP=1 leaves out the docker top loop (the seed's approach).
# WHOLE=1 measures what `make run` starts, not the collector alone: the NATS
# server, detector, notifier (console) and collector, their CPU summed.
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-50}
WINDOW=${WINDOW:-60}
WARMUP=${WARMUP:-5}
BIN=${BIN:-bin}
IMAGE=${IMAGE:-whalewatch-test/busybox:1}
VARIANTS=${VARIANTS:-}
COLLECTORS=${COLLECTORS:-}
SKIP_TOP=${SKIP_TOP:-0}
WHOLE=${WHOLE:-0}
SOCK=${SOCK:-/var/run/docker.sock}
NATS_PORT=${NATS_PORT:-14222}
HTTP_PORT=${HTTP_PORT:-19101}
LABEL="whalewatch.bench=collector-scale-$$"
HZ=$(getconf CLK_TCK)
TMP=$(mktemp -d)
PIDS=()

cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
	local ids
	ids=$(docker ps -aq --filter "label=$LABEL")
	if [ -n "$ids" ]; then docker rm -f $ids >/dev/null; fi
	rm -rf "$TMP"
}
trap cleanup EXIT

need=("$BIN/nats-server")
[ "$WHOLE" = 1 ] && need+=("$BIN/detector" "$BIN/notifier")
for f in "${need[@]}"; do
	[ -x "$f" ] || { echo "missing $f: run make build" >&2; exit 1; }
done
docker image inspect "$IMAGE" >/dev/null 2>&1 || {
	echo "missing $IMAGE: go test ./testkit/dockertest builds it" >&2; exit 1; }

# ticks PID: CPU ticks of the process and of its reaped children (dockerd
# runs the host's ps for docker top and reaps it).
ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12+$13+$14+$15}'; }
engine_pids() { { pgrep -x dockerd; pgrep -x containerd; pgrep -f containerd-shim; } | sort -u; }
engine_ticks() { local t=0 p; for p in $(engine_pids); do t=$((t + $(ticks "$p" 2>/dev/null || echo 0))); done; echo "$t"; }
pct() { awk -v t="$1" -v hz="$HZ" -v w="$2" 'BEGIN{printf "%.2f", 100*t/hz/w}'; }
rss_mib() { awk '/^'"$2"':/{printf "%.1f", $2/1024}' "/proc/$1/status"; }
metric() { curl -fsS "http://127.0.0.1:$HTTP_PORT/metrics" 2>/dev/null | awk -v m="$1" '$1==m{print $2}'; }

echo "# collector-scale: N=$N window=${WINDOW}s, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
start=$(date +%s.%N)
for i in $(seq "$N"); do
	docker run -d --network none --label "$LABEL" "$IMAGE" sleep 3600 >/dev/null
done
echo "created $N containers in $(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e-s}') s"
IDS=$(docker ps -q --no-trunc --filter "label=$LABEL")

printf '%-40s %8s %12s %12s %14s\n' phase window_s client_cpu% client_rss_MiB engine_cpu%
row() { printf '%-40s %8s %12s %12s %14s\n' "$@"; }

# Baseline: the engine with N idle containers and nothing watching.
sleep "$WARMUP"
e0=$(engine_ticks); sleep "$WINDOW"; e1=$(engine_ticks)
BASE=$(pct $((e1 - e0)) "$WINDOW")
row "baseline (no collector)" "$WINDOW" - - "$BASE"

"$BIN/nats-server" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$TMP/js" >"$TMP/nats.log" 2>&1 &
NATS=$!
PIDS+=("$NATS")

run_collector() {
	local name=$1 exe=$2; shift 2
	"$exe" -nats-url "nats://127.0.0.1:$NATS_PORT" -http-addr "127.0.0.1:$HTTP_PORT" \
		-host-name bench -log-level warn "$@" 2>"$TMP/collector.log" &
	local c=$!
	PIDS+=("$c")
	local deadline=$((SECONDS + 180))
	until [ "$(metric whalewatch_collector_containers_watched)" = "$N" ]; do
		if [ $SECONDS -gt $deadline ] || ! kill -0 "$c" 2>/dev/null; then
			echo "collector $name did not watch $N containers:" >&2; tail -20 "$TMP/collector.log" >&2; exit 1
		fi
		sleep 0.5
	done
	# WHOLE=1: the rest of what make run starts, measured with the collector.
	local others=()
	if [ "$WHOLE" = 1 ]; then
		"$BIN/detector" -nats-url "nats://127.0.0.1:$NATS_PORT" -http-addr "127.0.0.1:$((HTTP_PORT + 1))" \
			-log-level warn 2>"$TMP/detector.log" &
		others+=($!)
		"$BIN/notifier" -console -nats-url "nats://127.0.0.1:$NATS_PORT" -http-addr "127.0.0.1:$((HTTP_PORT + 2))" \
			-log-level warn >"$TMP/notifier.out" 2>"$TMP/notifier.log" &
		others+=($!)
		PIDS+=("${others[@]}")
	fi
	sleep "$WARMUP"
	local c0 e0 c1 e1 s0=0 s1=0 p
	sys_ticks() { local t=0 p; for p in "${others[@]}" "$NATS"; do t=$((t + $(ticks "$p"))); done; echo "$t"; }
	[ "$WHOLE" = 1 ] && s0=$(sys_ticks)
	c0=$(ticks "$c"); e0=$(engine_ticks); sleep "$WINDOW"; c1=$(ticks "$c"); e1=$(engine_ticks)
	[ "$WHOLE" = 1 ] && s1=$(sys_ticks)
	row "collector $name" "$WINDOW" "$(pct $((c1 - c0)) "$WINDOW")" "$(rss_mib "$c" VmRSS) (peak $(rss_mib "$c" VmHWM))" \
		"$(pct $((e1 - e0)) "$WINDOW") (+$(awk -v a="$(pct $((e1 - e0)) "$WINDOW")" -v b="$BASE" 'BEGIN{printf "%.2f", a-b}'))"
	if [ "$WHOLE" = 1 ]; then
		row "  + nats, detector, notifier" "$WINDOW" "$(pct $((s1 - s0)) "$WINDOW")" - -
		row "  = whole system (make run)" "$WINDOW" "$(pct $((c1 - c0 + s1 - s0)) "$WINDOW")" - -
		echo "    alerts printed by the notifier during the run: $(wc -l <"$TMP/notifier.out")"
		for p in "${others[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; done
	fi
	echo "    process source: $(curl -fsS "http://127.0.0.1:$HTTP_PORT/metrics" | awk '/^whalewatch_collector_process_mode/ && $2==1 {print $1}')"
	echo "    source modes: $(curl -fsS "http://127.0.0.1:$HTTP_PORT/metrics" | awk '/^whalewatch_collector_source_mode/ && $2==1 {printf "%s ", $1}')"
	echo "    fanotify events: $(curl -fsS "http://127.0.0.1:$HTTP_PORT/metrics" | awk '/^whalewatch_collector_fanotify_events_total/ {printf "%s ", $0}')"
	echo "    resource samples: $(curl -fsS "http://127.0.0.1:$HTTP_PORT/metrics" | awk '/^whalewatch_collector_resource_samples_total/ {printf "%s ", $0}')"
	kill "$c"; wait "$c" 2>/dev/null || true
	grep -v '^$' "$TMP/collector.log" | head -3 | sed 's/^/    log: /' || true
}

IFS=';' read -r -a VARS <<<"${VARIANTS:-}"
[ ${#VARS[@]} -gt 0 ] || VARS=("")
IFS=';' read -r -a EXES <<<"${COLLECTORS:-=$BIN/collector}"
for x in "${EXES[@]}"; do
	[ -x "${x#*=}" ] || { echo "missing ${x#*=}: run make build" >&2; exit 1; }
done
for x in "${EXES[@]}"; do
	for v in "${VARS[@]}"; do
		# shellcheck disable=SC2086
		run_collector "${x%%=*} ${v:-(defaults)}" "${x#*=}" $v
	done
done

# The seed's approach: docker top of every container once a second, here with
# curl on the socket (the client's CPU is curl's, a Go client's would be lower).
if [ "$SKIP_TOP" != 1 ]; then
c0=$(ticks $$); e0=$(engine_ticks)
end=$((SECONDS + WINDOW))
while [ $SECONDS -lt $end ]; do
	t=$(date +%s%N)
	for id in $IDS; do curl -fsS --unix-socket "$SOCK" -o /dev/null "http://docker/containers/$id/top"; done
	left=$(( (1000000000 - ($(date +%s%N) - t)) / 1000000 ))
	[ "$left" -gt 0 ] && sleep "0.$(printf '%03d' "$left")"
done
c1=$(ticks $$); e1=$(engine_ticks)
row "docker top loop, 1/s per container" "$WINDOW" "$(pct $((c1 - c0)) "$WINDOW") (curl)" - \
	"$(pct $((e1 - e0)) "$WINDOW") (+$(awk -v a="$(pct $((e1 - e0)) "$WINDOW")" -v b="$BASE" 'BEGIN{printf "%.2f", a-b}'))"
fi
# The baseline again: how much the engine's load drifted meanwhile (other
# work on the machine).
e0=$(engine_ticks); sleep "$WINDOW"; e1=$(engine_ticks)
row "baseline again (no collector)" "$WINDOW" - - "$(pct $((e1 - e0)) "$WINDOW")"
echo "# done: load $(cut -d' ' -f1-3 /proc/loadavg)"
