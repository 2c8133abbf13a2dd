#!/usr/bin/env bash
# Prepares a Debian 12 host to build ferrotron and run its guests and tests.
# Idempotent: safe to run on every CI run and every demo. Needs root.
#
#   provisioning/host-setup.sh            # build + VM packages, libvirtd running
#   provisioning/host-setup.sh --test     # also PostgreSQL, RabbitMQ, Chromium, sshd for the test suite
set -euo pipefail

want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

log() { printf 'host-setup: %s\n' "$*" >&2; }

if [[ $EUID -ne 0 ]]; then
  echo "host-setup: must run as root (it installs packages and starts libvirtd)" >&2
  exit 2
fi

# qemu-system-x86 from plain bookworm conflicts with the backported qemu-utils these
# machines ship, so everything VM-related comes from bookworm-backports.
backports=/etc/apt/sources.list.d/ferrotron-backports.sources
if [[ ! -f $backports ]]; then
  mirror=$(awk '/^URIs:/ && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  log "enabling bookworm-backports from $mirror"
  cat >"$backports" <<SRC
Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

vm_pkgs=(pkg-config libvirt-dev qemu-system-x86 qemu-utils libvirt-daemon-system
  libvirt-daemon-driver-qemu libvirt-clients genisoimage passt dropbear-bin openssh-client
  openssh-sftp-server busybox-static linux-image-cloud-amd64 debootstrap zstd cpio
  e2fsprogs python3 shellcheck lz4 xz-utils)
# openssh-server: tests/ssh_target.rs starts its own sshd on a port of its own (no service).
test_pkgs=(postgresql rabbitmq-server chromium chromium-driver openssh-server)

pkgs=("${vm_pkgs[@]}")
((want_test)) && pkgs+=("${test_pkgs[@]}")

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq -o Dpkg::Options::=--force-confold -t bookworm-backports "${missing[@]}" >/dev/null
fi

# No systemd here and policy-rc.d forbids starting services on install: start them by hand.
if ! virsh -c qemu:///system version >/dev/null 2>&1; then
  log "starting virtlogd and libvirtd"
  pgrep -x virtlogd >/dev/null || virtlogd -d
  pgrep -x libvirtd >/dev/null || libvirtd -d
  for _ in $(seq 50); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.2; done
  virsh -c qemu:///system version >/dev/null
fi

if ((want_test)); then
  if ! pg_isready -q 2>/dev/null; then
    log "starting PostgreSQL"
    ver=$(ls /usr/lib/postgresql | sort -V | tail -1)
    pg_ctlcluster "$ver" main start || true
    for _ in $(seq 50); do pg_isready -q && break; sleep 0.2; done
  fi
  if ! pgrep -f 'beam.*rabbit' >/dev/null; then
    log "starting RabbitMQ"
    (rabbitmq-server >/var/log/ferrotron-rabbitmq.log 2>&1 &)
    for _ in $(seq 150); do rabbitmqctl -q status >/dev/null 2>&1 && break; sleep 0.4; done
  fi
fi
log "ready"
