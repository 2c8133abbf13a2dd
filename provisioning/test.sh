#!/usr/bin/env bash
# Runs every check ferrotron has, on a fresh Debian 12 machine or an old one: installs and
# starts what the tests need (libvirtd, PostgreSQL, RabbitMQ, Chromium; sshd is only installed,
# tests/ssh_target.rs starts its own), builds the guest images the tests boot (cached in
# $FERROTRON_TEST_IMAGES), then format, lint and tests.
#
#   provisioning/test.sh              # everything
#   provisioning/test.sh -- libvirt   # pass a filter through to cargo test
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
started=$SECONDS

provisioning/host-setup.sh --test
mkdir -p /var/lib/ferrotron
eval "$(provisioning/test-postgres.sh)"
# The local RabbitMQ (started by host-setup.sh --test), for the daemon's bus tests.
export FERROTRON_TEST_AMQP=${FERROTRON_TEST_AMQP:-amqp://guest:guest@127.0.0.1:5672/%2f}
# Its TLS listener with client certificates (a test CA made with openssl; RabbitMQ restarts
# here, once, when the listener is new: never while tests run).
eval "$(provisioning/test-tls.sh)"

# Real Python clients (fedora-messaging, resultsdb_api, openstacksdk) in a venv of their own.
venv=/var/lib/ferrotron/test-venv
if [[ ! -x $venv/bin/python ]]; then
  python3 -m venv "$venv"
fi
if ! cmp -s provisioning/test-requirements.txt "$venv/.requirements"; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r provisioning/test-requirements.txt
  cp provisioning/test-requirements.txt "$venv/.requirements"
fi
export FERROTRON_TEST_PYTHON=$venv/bin/python
# host-setup.sh --test installed chromium and chromium-driver: the web UI tests drive them.
export FERROTRON_TEST_BROWSER=1

# Guest images: built once per machine, reused by later runs.
export FERROTRON_TEST_IMAGES=${FERROTRON_TEST_IMAGES:-/var/lib/ferrotron/test-images}
mkdir -p "$FERROTRON_TEST_IMAGES"
chmod 0755 /var/lib/ferrotron "$FERROTRON_TEST_IMAGES"
have() { compgen -G "$FERROTRON_TEST_IMAGES/*-$1.qcow2" >/dev/null; }
have tiny-1-base-x86_64 || provisioning/build-tiny.sh "$FERROTRON_TEST_IMAGES"
have debian-12-cloudinit-x86_64 || provisioning/build-debian.sh "$FERROTRON_TEST_IMAGES" --cloud-init
export FERROTRON_TEST_LIBVIRT=1 FERROTRON_TEST_CLOUDINIT=1
echo "== set-up done in $((SECONDS - started))s"

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test"
[[ "${1:-}" == "--" ]] && shift
status=0
cargo test --no-fail-fast "$@" || status=$?
echo "== tests done in $((SECONDS - started))s, exit $status"
exit "$status"
