#!/usr/bin/env bash
# Makes a ferrotron instance seed: an ISO9660 volume labelled `cidata` that serves both
# cloud-init images (NoCloud: user-data + meta-data) and ferrotron's light images (plain key
# files under ferrotron/). ferrotron's Rust code generates the same layout.
#
#   provisioning/make-seed.sh OUT.iso CLIENT_PUBKEY_FILE HOST_PRIVKEY_FILE [INSTANCE_UUID]
#
#   CLIENT_PUBKEY_FILE  one OpenSSH public key line (goes to root's authorized_keys)
#   HOST_PRIVKEY_FILE   ed25519 host key, OpenSSH PEM (-----BEGIN OPENSSH PRIVATE KEY-----);
#                       its public half is derived with ssh-keygen -y
#
# Layout:
#   meta-data                          instance-id: ferrotron-<uuid> / local-hostname: ferrotron-<first 8 hex>
#   user-data                          #cloud-config (pinned host key, the one client key, root allowed)
#   ferrotron/authorized_keys          the client public key line
#   ferrotron/ssh_host_ed25519_key     the host private key (OpenSSH PEM)
#   ferrotron/ssh_host_ed25519_key.pub its public key line
set -euo pipefail
PROG=make-seed
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $# -ge 3 && $# -le 4 ]] || { echo "usage: $0 OUT.iso CLIENT_PUBKEY_FILE HOST_PRIVKEY_FILE [INSTANCE_UUID]" >&2; exit 2; }
out=$1 client_pub_file=$2 host_key_file=$3
uuid=${4:-$(cat /proc/sys/kernel/random/uuid)}
command -v genisoimage >/dev/null || die "genisoimage missing"
command -v ssh-keygen >/dev/null || die "ssh-keygen missing"

client_pub=$(grep -m1 -E '^(ssh-|ecdsa-|sk-)' "$client_pub_file" || true)
[[ -n $client_pub ]] || die "$client_pub_file holds no OpenSSH public key line"
head -n1 "$host_key_file" | grep -qx -- '-----BEGIN OPENSSH PRIVATE KEY-----' \
  || die "$host_key_file is not an OpenSSH-format private key"
host_pub=$(ssh-keygen -y -f "$host_key_file") || die "cannot read $host_key_file"
[[ $host_pub == ssh-ed25519\ * ]] || die "host key must be ed25519"
short=${uuid//-/}; short=${short:0:8}
# YAML double-quoted scalar body: escape backslashes and double quotes.
ydq() { local v=${1//\\/\\\\}; printf '%s' "${v//\"/\\\"}"; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ferrotron-seed.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
d=$tmp/root
mkdir -p "$d/ferrotron"

printf 'instance-id: ferrotron-%s\nlocal-hostname: ferrotron-%s\n' "$uuid" "$short" >"$d/meta-data"

{
  echo '#cloud-config'
  echo 'disable_root: false'
  echo 'users: []'
  echo 'ssh_deletekeys: true'
  echo 'ssh_genkeytypes: []'
  echo 'ssh_authorized_keys:'
  printf '  - "%s"\n' "$(ydq "$client_pub")"
  echo 'ssh_keys:'
  echo '  ed25519_private: |'
  sed 's/^/    /' "$host_key_file"
  printf '  ed25519_public: "%s"\n' "$(ydq "$host_pub")"
} >"$d/user-data"

printf '%s\n' "$client_pub" >"$d/ferrotron/authorized_keys"
install -m 0600 "$host_key_file" "$d/ferrotron/ssh_host_ed25519_key"
printf '%s\n' "$host_pub" >"$d/ferrotron/ssh_host_ed25519_key.pub"

genisoimage -quiet -output "$tmp/seed.iso" -volid cidata -joliet -rock "$d" \
  || die "genisoimage failed"
mv -f "$tmp/seed.iso" "$out"
