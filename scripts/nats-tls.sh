#!/usr/bin/env bash
# nats-tls.sh — a CA and certificates for NATS TLS on loopback or a test
# network (deploy/nats/README.md). In production use your own PKI.
#
#   scripts/nats-tls.sh [-d DIR] [-o UID:GID] [SERVER-NAME...]
#
# Writes into DIR (default deploy/nats/secrets/tls), with openssl:
#   ca.pem ca.key           the CA (its key mode 600; keep it off the servers)
#   server.pem server.key   nats-server's certificate for localhost, 127.0.0.1,
#                           nats and every SERVER-NAME (DNS name or IP address)
#   client.pem client.key   a client certificate for the services (nats-tls.conf
#                           verifies clients: mutual TLS)
# Keys are mode 600; -o gives client.key to the user the services run as in
# their containers (65534:65534 in deploy/Dockerfile; needs root).
# Existing files are kept; delete DIR to start again. Certificates last 825 days.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
dir="$here/deploy/nats/secrets/tls"
owner=
while [[ ${1:-} == -d || ${1:-} == -o ]]; do
	case $1 in
	-d) dir=$2 ;;
	-o) owner=$2 ;;
	esac
	shift 2
done
if [[ ${1:-} == -* ]]; then
	sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//; /^set -e/d' >&2
	exit 2
fi
umask 077
mkdir -p "$dir"
cd "$dir"

san="DNS:localhost,IP:127.0.0.1,DNS:nats"
for n in "$@"; do
	if [[ $n =~ ^[0-9.]+$ || $n == *:* ]]; then
		san+=",IP:$n"
	elif [[ $n =~ ^[A-Za-z0-9.-]+$ ]]; then
		san+=",DNS:$n"
	else
		echo "nats-tls: '$n' is neither a host name nor an IP address" >&2
		exit 2
	fi
done

if [[ ! -s ca.pem ]]; then
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
		-subj "/CN=whalewatch NATS CA" -keyout ca.key -out ca.pem 2>/dev/null
fi

# issue name cn ext: a key and a certificate signed by the CA.
issue() {
	[[ -s $1.pem ]] && return
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
		-keyout "$1.key" -out "$1.csr" 2>/dev/null
	printf '%s\n' "$3" >"$1.ext"
	openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
		-extfile "$1.ext" -out "$1.pem" 2>/dev/null
	rm -f "$1.csr" "$1.ext"
}
issue server "whalewatch NATS server" "basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$san"
issue client "whalewatch service" "basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
chmod 644 ca.pem server.pem client.pem
chmod 755 .
if [[ -n $owner ]]; then
	chown "$owner" client.key
fi
echo "nats-tls: wrote $dir (server names: $san)" >&2
