#!/usr/bin/env bash
# Boot proof for a ferrotron base image: boots one disposable instance the way ferrotron's
# libvirt provider does and checks SSH with a pinned host key, exec, exit status, SFTP, tar.
#
#   provisioning/try-boot.sh [options] IMAGE.qcow2
#     --memory MIB     guest memory (default: 256 for tiny, 512 otherwise)
#     --vcpus N        (default 1)
#     --timeout S      seconds to wait for SSH (default: 60 tiny, 180 debian, 240 cloudinit)
#     --keep-log FILE  copy the serial console log to FILE
#     --exec CMD       also run CMD in the guest and show its output (repeatable)
#     --append ARGS    extra kernel command line arguments (debugging, e.g. "loglevel=7")
#     --quiet          only the summary lines
#
# Needs the image's sidecars (IMAGE.vmlinux, .initrd, .json) next to it, a running libvirtd
# (qemu:///system), passt, genisoimage, ssh/sftp/ssh-keygen, python3.
# Leaves nothing behind: the domain is transient and destroyed, the overlay, seed, keys and
# console log live in a temp dir that is removed on exit (also on failure or Ctrl-C).
set -euo pipefail
PROG=try-boot
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

memory='' vcpus=1 timeout='' keep_log='' quiet=0 image='' append='' execs=()
while (($#)); do
  case $1 in
    --memory) memory=$2; shift 2 ;;
    --vcpus) vcpus=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --keep-log) keep_log=$2; shift 2 ;;
    --append) append=$2; shift 2 ;;
    --exec) execs+=("$2"); shift 2 ;;
    --quiet) quiet=1; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) [[ -z $image ]] || die "one image only"; image=$1; shift ;;
  esac
done
[[ -n $image ]] || { sed -n '2,19p' "$0" >&2; exit 2; }
[[ -f $image ]] || die "$image not found"
image=$(realpath "$image")
stem=${image%.qcow2}
json=$stem.json
[[ -f $json ]] || die "$json (metadata sidecar) missing"
for c in virsh qemu-img ssh sftp ssh-keygen python3 genisoimage; do
  command -v "$c" >/dev/null || die "$c missing"
done
conn=qemu:///system
virsh -c "$conn" version >/dev/null 2>&1 || die "libvirtd not answering on $conn (virtlogd -d; libvirtd -d)"

meta() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$json" "$1"; }
distro=$(meta distro)
kernel=$(dirname "$image")/$(meta kernel)
initrd=$(dirname "$image")/$(meta initrd)
cmdline=$(meta cmdline)${append:+ $append}
user=$(meta user)
[[ -f $kernel && -f $initrd ]] || die "kernel/initrd sidecars missing ($kernel, $initrd)"
# Defaults as in images/*.yaml (boot.memory_mib, boot.timeout_s).
case $distro/$(meta flavor) in
  tiny/*) memory=${memory:-256}; timeout=${timeout:-60} ;;
  */cloudinit) memory=${memory:-512}; timeout=${timeout:-240} ;;
  *) memory=${memory:-512}; timeout=${timeout:-180} ;;
esac

run_uuid=$(cat /proc/sys/kernel/random/uuid)
name=ferrotron-tryboot-${run_uuid:0:8}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ferrotron-tryboot.XXXXXX")
chmod 0755 "$tmp"   # qemu runs as libvirt-qemu and must reach the overlay and the seed
started=0
cleanup() {
  local rc=$?
  if ((started)); then
    virsh -c "$conn" destroy "$name" >/dev/null 2>&1 || true
  fi
  if [[ -n $keep_log && -f $tmp/console.log ]]; then cp "$tmp/console.log" "$keep_log" || true; fi
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { ((quiet)) || log "$*"; }

# ------------------------------------------------------------ keys, seed, overlay
ssh-keygen -q -t ed25519 -N '' -C "ferrotron-client-$run_uuid" -f "$tmp/client"
ssh-keygen -q -t ed25519 -N '' -C "ferrotron-host-$run_uuid" -f "$tmp/hostkey"
printf 'ferrotron-guest %s\n' "$(cut -d' ' -f1,2 "$tmp/hostkey.pub")" >"$tmp/known_hosts"
"$here/make-seed.sh" "$tmp/seed.iso" "$tmp/client.pub" "$tmp/hostkey" "$run_uuid"
qemu-img create -q -f qcow2 -b "$image" -F qcow2 "$tmp/overlay.qcow2"
: >"$tmp/console.log"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

python3 - "$here/domain-template.xml" "$tmp/domain.xml" <<PY
import sys
import re
from xml.sax.saxutils import escape
tpl = open(sys.argv[1]).read()
vals = {
    "NAME": "$name", "UUID": "$run_uuid", "MEMORY_MIB": "$memory", "VCPUS": "$vcpus",
    "KERNEL": "$kernel", "INITRD": "$initrd", "CMDLINE": """$cmdline""",
    "OVERLAY": "$tmp/overlay.qcow2", "BASE": "$image", "SEED": "$tmp/seed.iso",
    "SSH_PORT": "$port", "CONSOLE_LOG": "$tmp/console.log",
    "RUN_UUID": "$run_uuid", "OWNER": "try-boot@$(hostname)", "IMAGE": "$(basename "$image")",
    "CREATED_AT": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
}
body = tpl[tpl.index("<domain"):]   # drop the explanatory comment
for k, v in vals.items():
    body = body.replace("@%s@" % k, escape(v, {"'": "&apos;", '"': "&quot;"}))
left = re.findall(r"@[A-Z_]+@", body)
assert not left, "unfilled placeholders: %s" % left
open(sys.argv[2], "w").write(body)
PY

sshopts=(-o BatchMode=yes -o StrictHostKeyChecking=yes -o "UserKnownHostsFile=$tmp/known_hosts"
  -o GlobalKnownHostsFile=/dev/null -o HostKeyAlias=ferrotron-guest -o IdentitiesOnly=yes
  -o ConnectTimeout=3 -o ServerAliveInterval=5 -o ServerAliveCountMax=3 -o LogLevel=ERROR
  -i "$tmp/client")
gssh() { ssh "${sshopts[@]}" -p "$port" "$user@127.0.0.1" "$@"; }

# ------------------------------------------------------------ boot
say "image $(basename "$image") ($distro), ${memory} MiB, $vcpus vCPU, ssh port $port, domain $name"
t0=$(now)
started=1   # before create: an interrupt during `virsh create` must still destroy the domain
virsh -c "$conn" create "$tmp/domain.xml" >/dev/null || die "virsh create failed"
t1=$(now)
# Wait for SSH. A connection made through passt before the guest has its address hangs (the SYN
# goes nowhere), and every SSH handshake costs the TCG guest real CPU time, so: a cheap probe
# (TCP connect, send a client banner, read the "SSH-" server banner; 1.5 s timeout; one at a
# time), and only after a banner one real `ssh true`. (Overlapping full ssh probes measurably
# slowed slow guests down.) NB: through this passt (2023-03), the guest's bytes reach the host
# only after the host side has sent something: a probe that just waits for the banner (or
# ssh-keyscan) never sees it. SSH clients send their banner first, so real clients work.
banner() {
  python3 - "$port" <<'PY' 2>/dev/null
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1.5)
    s.settimeout(1.5)
    s.sendall(b"SSH-2.0-ferrotron-probe\r\n")
    sys.exit(0 if s.recv(64).startswith(b"SSH-") else 1)
except OSError:
    sys.exit(1)
PY
}
attempts=0 t2=
while :; do
  attempts=$((attempts + 1))
  if banner && timeout 30 ssh "${sshopts[@]}" -o ConnectTimeout=20 -p "$port" "$user@127.0.0.1" true 2>/dev/null; then
    t2=$(now)
    break
  fi
  if (($(awk -v a="$(secs "$t0" "$(now)")" -v b="$timeout" 'BEGIN { print (a > b) }'))); then
    log "no SSH after ${timeout}s; console log tail:"
    tail -n 40 "$tmp/console.log" >&2 || true
    exit 1
  fi
  if ((attempts % 10 == 0)) && [[ $(virsh -c "$conn" domstate "$name" 2>/dev/null || true) != running* ]]; then
    log "domain is not running; console log tail:"; tail -n 40 "$tmp/console.log" >&2; exit 1
  fi
  sleep 0.2
done
echo "RESULT image=$(basename "$image") time_to_ssh=$(secs "$t0" "$t2")s (after virsh create returned: $(secs "$t1" "$t2")s; virsh create: $(secs "$t0" "$t1")s; probes: $attempts)"

# ------------------------------------------------------------ checks
fail=0
check() { # check NAME CMD... : run, report ok/FAIL
  local n=$1; shift
  if "$@"; then echo "CHECK $n ok"; else echo "CHECK $n FAIL"; fail=1; fi
}

# pinned host key: the key the guest presents is ours, and a different pinned key is refused.
# (ssh-keyscan gets no answer through passt here, so ask ssh itself.)
chk_hostkey() {
  local fp want
  want=$(ssh-keygen -l -f "$tmp/hostkey.pub" | awk '{print $2}')
  # (ssh keeps the first value of an option: overrides go before ${sshopts[@]})
  fp=$(ssh -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o LogLevel=DEBUG1 "${sshopts[@]}" \
        -p "$port" "$user@127.0.0.1" true 2>&1 | tr -d '\r' | sed -n 's/.*Server host key: ssh-ed25519 //p' | head -n 1)
  [[ $fp == "$want" ]] || { log "guest host key '$fp', pinned $want"; return 1; }
  ssh-keygen -q -t ed25519 -N '' -f "$tmp/otherkey"
  printf 'ferrotron-guest %s\n' "$(cut -d' ' -f1,2 "$tmp/otherkey.pub")" >"$tmp/known_hosts.wrong"
  if ssh -o UserKnownHostsFile="$tmp/known_hosts.wrong" "${sshopts[@]}" -p "$port" "$user@127.0.0.1" true 2>/dev/null; then
    log "a wrong pinned key was accepted"; return 1
  fi
}
check pinned-host-key chk_hostkey

chk_exit3() {
  local err rc=0
  err=$(gssh 'echo to-stdout; echo to-stderr >&2; exit 3' 2>&1 >/dev/null) || rc=$?
  [[ $rc == 3 && $err == to-stderr ]] || { log "exit=$rc stderr=$err"; return 1; }
}
check exit-status-3-and-stderr chk_exit3

chk_sftp() {
  head -c 1048576 /dev/urandom >"$tmp/payload"
  printf 'put %s /tmp/ferrotron-sftp-payload\n' "$tmp/payload" >"$tmp/sftp.batch"
  sftp "${sshopts[@]}" -P "$port" -b "$tmp/sftp.batch" "$user@127.0.0.1" >/dev/null || return 1
  local want got
  want=$(sha256sum <"$tmp/payload" | cut -d' ' -f1)
  got=$(gssh 'sha256sum /tmp/ferrotron-sftp-payload' | cut -d' ' -f1)
  [[ $want == "$got" ]] || { log "sha256 local $want remote $got"; return 1; }
  sftp "${sshopts[@]}" -P "$port" -b - "$user@127.0.0.1" >/dev/null <<<"get /tmp/ferrotron-sftp-payload $tmp/payload.back"
  cmp -s "$tmp/payload" "$tmp/payload.back"
}
check sftp-put-get-sha256 chk_sftp

chk_tar() {
  mkdir -p "$tmp/tree/a/b"
  echo hello >"$tmp/tree/a/b/file.txt"
  printf '#!/bin/sh\necho run\n' >"$tmp/tree/run.sh"; chmod +x "$tmp/tree/run.sh"
  tar -C "$tmp/tree" -cf - . | gssh 'rm -rf /tmp/ferrotron-tar && mkdir -p /tmp/ferrotron-tar && tar -C /tmp/ferrotron-tar -xf - && sh /tmp/ferrotron-tar/run.sh >/tmp/ferrotron-tar/out.txt' || return 1
  local list
  list=$(gssh 'tar -C /tmp/ferrotron-tar -cf - .' | tar -tf - | sort | tr '\n' ' ')
  [[ $list == *./a/b/file.txt* && $list == *./out.txt* ]] || { log "tar back: $list"; return 1; }
}
check tar-roundtrip chk_tar

if gssh 'command -v python3' >/dev/null 2>&1; then
  check python3 test "$(gssh "python3 -c 'print(1)'")" = 1
else
  echo "CHECK python3 absent"
fi

if ((!quiet)); then
  gssh 'echo "guest: $(uname -r) $(. /etc/os-release; echo $PRETTY_NAME)"; echo "whoami=$(id -un) HOME=$HOME shell=$SHELL hostname=$(hostname)"; ls -ld /tmp /root /usr/lib/sftp-server; mount | grep -E " on / | on /tmp " ; df -h / | tail -n1; ip -4 -o addr show | grep -v " lo "; grep -c processor /proc/cpuinfo; free -m | sed -n 2p' | sed 's/^/  /'
fi

for c in "${execs[@]}"; do
  echo "EXEC $c"
  gssh "$c" 2>&1 | sed 's/^/  /' || true
done

if [[ -n ${FERROTRON_TRYBOOT_HOLD:-} ]]; then   # debugging: keep the guest up a while
  log "holding ${FERROTRON_TRYBOOT_HOLD}s: ssh ${sshopts[*]} -p $port $user@127.0.0.1"
  sleep "$FERROTRON_TRYBOOT_HOLD"
fi
t3=$(now)
virsh -c "$conn" destroy "$name" >/dev/null
started=0
t4=$(now)
echo "RESULT checks=$([[ $fail == 0 ]] && echo ok || echo FAIL) checks_time=$(secs "$t2" "$t3")s destroy=$(secs "$t3" "$t4")s"
exit "$fail"
