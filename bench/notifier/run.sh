#!/bin/sh
# Notifier scenarios of issue 7, each run once against the in-process NATS
# server and Slack stand-in: a 10k burst, a critical threat behind 10k lows,
# three replicas with a 3 s Slack, a kill -9 mid-stream, a fresh durable on an
# old stream, a 20 s outage of 500s. See README.md. Takes about 6 minutes.
set -eu
cd "$(dirname "$0")/../../services/notifier"
uptime
go test -run '^$' -bench "${BENCH:-Scenario}" -benchtime=1x -timeout 30m ./internal/notifier/
uptime
