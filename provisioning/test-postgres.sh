#!/usr/bin/env bash
# Makes the local PostgreSQL usable by the store tests over TCP with password auth, and prints
# the URL to export. Idempotent. Needs root (or the postgres user); PostgreSQL itself is
# installed and started by `provisioning/host-setup.sh --test`.
#
#   eval "$(provisioning/test-postgres.sh)"     # sets FERROTRON_TEST_PG
#
# The tests connect to the printed database as an admin connection and create (and drop) one
# uniquely named database per test, so the role needs CREATEDB; the postgres superuser has it.
set -euo pipefail

user=postgres
password=${FERROTRON_TEST_PG_PASSWORD:-postgres}
db=ferrotron_test
host=127.0.0.1
port=${PGPORT:-5432}

log() { printf 'test-postgres: %s\n' "$*" >&2; }

as_postgres() {
  if [[ $(id -un) == postgres ]]; then
    "$@"
  elif [[ $EUID -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    echo "test-postgres: must run as root or as the postgres user" >&2
    exit 2
  fi
}

if ! pg_isready -q -h "$host" -p "$port"; then
  echo "test-postgres: PostgreSQL is not accepting connections on $host:$port" \
    "(run provisioning/host-setup.sh --test first)" >&2
  exit 1
fi

# Over the unix socket with peer auth: set the password, create the admin database if missing.
as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$port" -d postgres \
  -c "ALTER USER $user PASSWORD '$password'" >/dev/null
if [[ -z $(as_postgres psql -X -tA -p "$port" -d postgres \
  -c "SELECT 1 FROM pg_database WHERE datname = '$db'") ]]; then
  log "creating database $db"
  as_postgres createdb -p "$port" "$db"
fi

url="postgres://$user:$password@$host:$port/$db"
# Check the URL really works over TCP with the password (pg_hba: scram-sha-256 on 127.0.0.1).
if ! PGPASSWORD=$password psql -X -q -h "$host" -p "$port" -U "$user" -d "$db" \
  -c 'SELECT 1' >/dev/null; then
  echo "test-postgres: cannot log in over TCP as $user; check pg_hba.conf" >&2
  exit 1
fi
log "ready: $url"
echo "export FERROTRON_TEST_PG=$url"
