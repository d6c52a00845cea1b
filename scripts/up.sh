#!/usr/bin/env bash
# make up: the production deployment on this Docker host, from .env.
#
# Builds the images (make images), makes the NATS identities for this host
# (scripts/nats-creds.sh, seeds owned by the services' user 65534), and starts
# docker-compose.yml, plus docker-compose.respond.yml when RESPONSE_MODE=enforce.
# Arguments go to `compose up` (e.g. --scale detector=3). Run as root (or with
# sudo): the seeds are given to uid 65534.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -f .env ]]; then
	cp deploy/env.example .env
	echo "up: wrote .env from deploy/env.example: fill it in, then run make up again" >&2
	exit 1
fi
set -a
# shellcheck disable=SC1091
. ./.env
set +a
: "${HOST_NAME:?set HOST_NAME in .env}"
# The collector's identity is its host name as a subject token (deploy/nats/README.md).
export COLLECTOR_IDENTITY=${COLLECTOR_IDENTITY:-collector-$(tr '. ' '__' <<<"$HOST_NAME")}
make images
scripts/nats-creds.sh -o 65534:65534 "$HOST_NAME"
files=(-f docker-compose.yml)
[[ ${RESPONSE_MODE:-dry-run} == enforce ]] && files+=(-f docker-compose.respond.yml)
if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
# A running nats-server reloads users.conf (a new host's collector, the setup
# identity after an upgrade) before the nats-setup job connects; none runs
# on the first start.
"${compose[@]}" "${files[@]}" kill -s HUP nats >/dev/null 2>&1 || true
exec "${compose[@]}" "${files[@]}" up -d "$@"
