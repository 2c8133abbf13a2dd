#!/usr/bin/env bash
# Gives the local RabbitMQ a TLS listener that requires a client certificate (as Fedora's
# broker does), for the bus tests, and prints the variables to export. Idempotent: the CA
# and certificates are made once (openssl) under $dir; RabbitMQ is restarted only when its
# TLS listener is missing, which on a fresh machine is once, before any test runs.
# The same server certificate turns TLS on in the local PostgreSQL (a reload, no restart),
# for the store's TLS test.
# Needs root; RabbitMQ and PostgreSQL are installed and started by
# `provisioning/host-setup.sh --test`.
#
#   eval "$(provisioning/test-tls.sh)"    # sets FERROTRON_TEST_TLS_DIR, FERROTRON_TEST_AMQPS,
#                                         # FERROTRON_TEST_PG_TLS
#
# Made here: ca.pem (the test CA), server.pem/server-key.pem (localhost, 127.0.0.1),
# client.pem/client-key.pem (CN ferrotron-test, a RabbitMQ user that logs in with EXTERNAL),
# other-ca.pem (a CA nobody trusts, for the refusal tests).
set -euo pipefail

dir=${FERROTRON_TEST_TLS_DIR:-/var/lib/ferrotron/test-tls}
port=5671
user=ferrotron-test

log() { printf 'test-tls: %s\n' "$*" >&2; }

mkdir -p "$dir"
chmod 0755 "$dir"
cd "$dir"

# One CA, one server and one client certificate, valid for ten years.
make_cert() { # NAME CN EXT
  local name=$1 cn=$2 ext=$3
  [[ -s $name.pem && -s $name-key.pem ]] && return
  openssl req -new -newkey rsa:2048 -nodes -keyout "$name-key.pem" -subj "/CN=$cn" \
    -out "$name.csr" 2>/dev/null
  printf '%s\n' "$ext" >"$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
    -days 3650 -sha256 -extfile "$name.ext" -out "$name.pem" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}
if [[ ! -s ca.pem || ! -s ca-key.pem ]]; then
  log "making the test CA in $dir"
  rm -f server.pem server-key.pem client.pem client-key.pem
  openssl req -x509 -new -newkey rsa:2048 -nodes -keyout ca-key.pem -subj "/CN=ferrotron test CA" \
    -days 3650 -sha256 -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem 2>/dev/null
fi
make_cert server localhost "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth
basicConstraints=CA:FALSE"
make_cert client "$user" "extendedKeyUsage=clientAuth
basicConstraints=CA:FALSE"
if [[ ! -s other-ca.pem ]]; then
  openssl req -x509 -new -newkey rsa:2048 -nodes -keyout other-ca-key.pem \
    -subj "/CN=untrusted test CA" -days 3650 -out other-ca.pem 2>/dev/null
fi
# The broker runs as rabbitmq and must read its key; the tests (root) read the rest.
chmod 0644 ./*.pem
chmod 0600 ca-key.pem other-ca-key.pem server-key.pem client-key.pem
# PostgreSQL's copy from an earlier run: it refuses to start on a key others can read.
[[ -e pg-server-key.pem ]] && chmod 0600 pg-server-key.pem
if id rabbitmq >/dev/null 2>&1; then
  chown rabbitmq server-key.pem
fi

# RabbitMQ: a TLS listener with peer verification, EXTERNAL login by certificate CN.
conf=/etc/rabbitmq/rabbitmq.conf
want="# ferrotron test TLS (provisioning/test-tls.sh)
listeners.tcp.default = 5672
listeners.ssl.default = $port
ssl_options.cacertfile = $dir/ca.pem
ssl_options.certfile = $dir/server.pem
ssl_options.keyfile = $dir/server-key.pem
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
ssl_cert_login_from = common_name
auth_mechanisms.1 = PLAIN
auth_mechanisms.2 = AMQPLAIN
auth_mechanisms.3 = EXTERNAL"
if [[ "$(cat "$conf" 2>/dev/null)" != "$want" ]]; then
  log "writing $conf"
  printf '%s\n' "$want" >"$conf"
fi
# Enabling a plugin needs no restart on a running node (and is recorded for the next start).
if ! rabbitmq-plugins -q list -e 2>/dev/null | grep -q rabbitmq_auth_mechanism_ssl; then
  log "enabling rabbitmq_auth_mechanism_ssl"
  rabbitmq-plugins -q enable rabbitmq_auth_mechanism_ssl >/dev/null
fi
listening() { rabbitmq-diagnostics -q listeners 2>/dev/null | grep -q "port: $port"; }
if ! listening; then
  # The listener is read at node start only: restart the node once, now, before any test.
  log "restarting RabbitMQ for its TLS listener"
  rabbitmqctl -q stop >/dev/null 2>&1 || true
  for _ in $(seq 100); do pgrep -f 'beam.*rabbit' >/dev/null || break; sleep 0.2; done
  (rabbitmq-server >>/var/log/ferrotron-rabbitmq.log 2>&1 &)
  rabbitmqctl -q await_startup >/dev/null 2>&1 || true
  for _ in $(seq 150); do listening && break; sleep 0.4; done
  listening || { log "RabbitMQ has no TLS listener on $port (see /var/log/ferrotron-rabbitmq.log)"; exit 1; }
fi
# The user the client certificate logs in as (no password login: EXTERNAL only).
if ! rabbitmqctl -q list_users 2>/dev/null | awk '{print $1}' | grep -qx "$user"; then
  log "adding RabbitMQ user $user"
  rabbitmqctl -q add_user "$user" "$(openssl rand -hex 16)" >/dev/null
  rabbitmqctl -q clear_password "$user" >/dev/null
fi
rabbitmqctl -q set_permissions -p / "$user" '.*' '.*' '.*' >/dev/null

log "ready: amqps://localhost:$port (client certificate $dir/client.pem)"
echo "export FERROTRON_TEST_TLS_DIR=$dir"
echo "export FERROTRON_TEST_AMQPS=amqps://localhost:$port/%2f"

# PostgreSQL: TLS on with the same server certificate. The server insists that its key be
# private to it, so it gets a copy of its own. ssl is reloadable: no restart, no test cut off.
pg_password=${FERROTRON_TEST_PG_PASSWORD:-postgres}
if id postgres >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p "${PGPORT:-5432}"; then
  install -m 0600 -o postgres server-key.pem pg-server-key.pem
  pg() { runuser -u postgres -- psql -X -q -tA -v ON_ERROR_STOP=1 -p "${PGPORT:-5432}" -d postgres "$@"; }
  if [[ $(pg -c "SHOW ssl") != on || $(pg -c "SHOW ssl_cert_file") != "$dir/server.pem" ]]; then
    log "turning TLS on in PostgreSQL"
    pg -c "ALTER SYSTEM SET ssl_cert_file = '$dir/server.pem'" \
      -c "ALTER SYSTEM SET ssl_key_file = '$dir/pg-server-key.pem'" \
      -c "ALTER SYSTEM SET ssl = on" -c "SELECT pg_reload_conf()" >/dev/null
    for _ in $(seq 50); do [[ $(pg -c "SHOW ssl") == on ]] && break; sleep 0.2; done
  fi
  if [[ $(pg -c "SHOW ssl") == on ]]; then
    log "ready: PostgreSQL with TLS on 127.0.0.1 (CA $dir/ca.pem)"
    echo "export FERROTRON_TEST_PG_TLS='postgres://postgres:$pg_password@localhost:${PGPORT:-5432}/ferrotron_test?sslmode=verify-full&sslrootcert=$dir/ca.pem'"
  else
    log "PostgreSQL did not turn TLS on (see its log); the store TLS test will skip"
  fi
fi
