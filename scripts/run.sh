#!/usr/bin/env bash
# make run: the whole system on this machine against the local Docker engine.
#
# Starts a NATS server with JetStream on $NATS_ADDR (127.0.0.1:4222) and the four
# services; alerts are printed here. Elasticsearch is used when ELASTICSEARCH_URL
# is set, Slack when SLACK_WEBHOOK_URL or SLACK_BOT_TOKEN + SLACK_CHANNEL are.
# Ctrl-C or SIGTERM stops everything cleanly. Logs: .run/logs/.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=$root/bin
state=$root/.run
logs=$state/logs
mkdir -p "$logs" "$state/nats"

NATS_ADDR=${NATS_ADDR:-127.0.0.1:4222}
nats_host=${NATS_ADDR%:*}
nats_port=${NATS_ADDR##*:}
export NATS_URL=${NATS_URL:-nats://$NATS_ADDR}
export LOG_FORMAT=${LOG_FORMAT:-json}

if ! docker info >/dev/null 2>&1; then
  cat >&2 <<MSG
make run: no Docker engine answers${DOCKER_HOST:+ at DOCKER_HOST=$DOCKER_HOST}.
whalewatch watches the containers of a local Docker engine. Start one, then run make run again:
  sudo apt-get install -y docker.io        # if docker is not installed
  sudo dockerd --storage-driver=vfs &      # or: sudo systemctl start docker
(or point DOCKER_HOST at a running engine).
MSG
  exit 1
fi

pids=()
names=()
start() { # start NAME LOGFILE CMD...
  local name=$1 log=$2; shift 2
  if [ "$log" = - ]; then "$@" 2>>"$logs/$name.log" & else "$@" >>"$log" 2>&1 & fi
  pids+=($!)
  names+=("$name")
  echo "started $name (pid $!)"
}
stopping=0
stop_all() {
  [ "$stopping" = 1 ] && return
  stopping=1
  echo; echo "stopping..."
  # Services first (they drain), the NATS server last.
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null; done
  for ((i=${#pids[@]}-1; i>=0; i--)); do
    for _ in $(seq 1 150); do kill -0 "${pids[$i]}" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "${names[$i]} did not stop in 15 s; killing it"; kill -KILL "${pids[$i]}" 2>/dev/null
    fi
    wait "${pids[$i]}" 2>/dev/null
  done
  echo "stopped."
}
trap 'stop_all; exit 0' INT TERM
trap stop_all EXIT

if (exec 3<>"/dev/tcp/$nats_host/$nats_port") 2>/dev/null; then
  echo "make run: something already listens on $NATS_ADDR; stop it or set NATS_ADDR" >&2
  exit 1
fi
start nats "$logs/nats.log" "$bin/nats-server" -a "$nats_host" -p "$nats_port" -js -sd "$state/nats" -n whalewatch-local
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/$nats_host/$nats_port") 2>/dev/null && break
  sleep 0.1
done

start detector "$logs/detector.log" "$bin/detector"
if [ "$(id -u)" != 0 ]; then
  echo "note: the collector runs without root; it sees processes by polling docker top"
fi
start collector "$logs/collector.log" "$bin/collector"
notify_args=(-console)
start notifier - "$bin/notifier" "${notify_args[@]}"
if [ -n "${SLACK_WEBHOOK_URL:-}${SLACK_BOT_TOKEN:-}" ]; then echo "Slack: on"; else echo "Slack: off (set SLACK_WEBHOOK_URL to post alerts)"; fi
if [ -n "${ELASTICSEARCH_URL:-}" ]; then
  start indexer "$logs/indexer.log" "$bin/indexer"
else
  echo "Elasticsearch: off (set ELASTICSEARCH_URL to index events)"
fi

cat <<MSG

whalewatch is running. NATS: $NATS_URL   logs: $logs/
Try it:  docker run -d --name ww-demo --network none <image> sleep 3600
         docker exec ww-demo nc -l -p 4444
Alerts appear below. Ctrl-C stops everything.

MSG

# Stop everything if any process exits on its own.
while :; do
  wait -n "${pids[@]}" 2>/dev/null
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "${names[$i]} exited unexpectedly; last log lines:" >&2
      tail -n 20 "$logs/${names[$i]}.log" >&2
      exit 1
    fi
  done
done
