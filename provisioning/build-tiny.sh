#!/usr/bin/env bash
# Builds the ferrotron `tiny` guest image from the host's Debian packages, offline.
#
#   provisioning/build-tiny.sh OUTDIR
#
# Produces, in OUTDIR (UTC build time in the name):
#   YYMMDD_HHMM-tiny-1-base-x86_64.qcow2    ext4 root (busybox, dropbear, sftp-server) on /dev/vda
#   YYMMDD_HHMM-tiny-1-base-x86_64.vmlinux  uncompressed Debian cloud kernel (direct kernel boot)
#   YYMMDD_HHMM-tiny-1-base-x86_64.initrd   small initramfs: insmods virtio/isofs, mounts /dev/vda
#   YYMMDD_HHMM-tiny-1-base-x86_64.json     metadata
#
# Guest boot: initramfs loads failover, net_failover, virtio_net, virtio_blk, cdrom, isofs
# (+ nls_utf8), mounts root=/dev/vda (ext4, built in) and switch_roots to busybox init. The
# root's /etc/init.d/rcS brings up eth0 with udhcpc (passt serves DHCP), mounts the ISO9660
# seed labelled `cidata`, installs the pinned host key and root's authorized_keys from its
# ferrotron/ directory, and init then runs dropbear on port 22 (public key logins only).
#
# Needs: busybox-static dropbear-bin openssh-sftp-server linux-image-cloud-amd64 zstd cpio
# e2fsprogs qemu-utils xz-utils (provisioning/host-setup.sh installs them).
set -euo pipefail
# shellcheck disable=SC2034 # used by lib/image-common.sh
PROG=build-tiny
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/image-common.sh
. "$here/lib/image-common.sh"

usage() { echo "usage: $0 OUTDIR" >&2; exit 2; }
[[ $# -eq 1 && $1 != -* ]] || usage
outdir=$1

# cryptomgr.notests: skip the crypto self-tests at boot (~1 s under TCG)
CMDLINE=${TINY_CMDLINE:-"console=ttyS0 root=/dev/vda rw quiet cryptomgr.notests"}
ROOT_SIZE=${TINY_ROOT_SIZE:-1G}

need_cmds busybox dropbear dropbearconvert dropbearkey zstdcat cpio mkfs.ext4 qemu-img xz ldd
sftp_server=/usr/lib/openssh/sftp-server
[[ -x $sftp_server ]] || die "$sftp_server missing (install openssh-sftp-server)"
[[ $(ldd /bin/busybox 2>&1 || true) == *"not a dynamic"* ]] \
  || die "/bin/busybox is not static (install busybox-static)"

# Newest installed cloud kernel.
vmlinuz=$(ls -1 /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -n 1 || true)
[[ -n $vmlinuz ]] || die "no /boot/vmlinuz-*-cloud-amd64 (install linux-image-cloud-amd64)"
kver=${vmlinuz#/boot/vmlinuz-}
moddir=/lib/modules/$kver
[[ -d $moddir ]] || die "$moddir missing"

mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
stamp=$(build_stamp)
stem=$stamp-tiny-1-base-x86_64

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ferrotron-tiny.XXXXXX")
cleanup() {
  local rc=$?
  trap '' INT TERM
  rm -rf "$tmp"
  rm -f "$outdir/.partial-$stem".*
  ((rc == 0)) || log "failed (exit $rc); nothing was written to $outdir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t0=$(date +%s.%N)
log "kernel $kver -> $stem"

# ---------------------------------------------------------------- kernel
extract_vmlinux "$vmlinuz" "$tmp/$stem.vmlinux"

# ---------------------------------------------------------------- modules (insmod order)
# Resolve each wanted module's dependencies from modules.dep, decompress .ko.xz/.ko.zst to
# plain .ko (busybox insmod does not decompress) and record the load order.
wanted=(failover net_failover virtio_net virtio_blk cdrom isofs nls_utf8)
declare -A seen=()
order=()
modpath() { # module name -> relative path in modules.dep ('' if built in)
  local n=$1 alt
  alt=${n//_/-}
  awk -F: -v a="/$n.ko" -v b="/$alt.ko" '
    { p=$1; sub(/\.(xz|zst|gz)$/, "", p)
      if (substr(p, length(p)-length(a)+1) == a || substr(p, length(p)-length(b)+1) == b) { print $1; exit } }' \
    "$moddir/modules.dep"
}
add_mod() { # depth-first: dependencies first
  local rel=$1 dep
  [[ -n ${seen[$rel]:-} ]] && return 0
  seen[$rel]=1
  for dep in $(awk -F': ' -v r="$rel" '$1 == r { print $2; exit }' "$moddir/modules.dep"); do
    add_mod "$dep"
  done
  order+=("$rel")
}
for m in "${wanted[@]}"; do
  rel=$(modpath "$m")
  if [[ -z $rel ]]; then
    grep -qE "/$m\.ko" "$moddir/modules.builtin" || die "module $m not found for $kver"
    continue   # built in
  fi
  add_mod "$rel"
done

ird=$tmp/initramfs
mkdir -p "$ird"/{bin,dev,proc,sys,newroot,lib/modules}
cp /bin/busybox "$ird/bin/busybox"
for a in sh mount umount switch_root insmod sleep cat mkdir echo grep ls mknod; do
  ln -s busybox "$ird/bin/$a"
done
: >"$ird/modules.order"
for rel in "${order[@]}"; do
  name=$(basename "$rel"); name=${name%.xz}; name=${name%.zst}; name=${name%.gz}
  case $rel in
    *.xz) xz -dc "$moddir/$rel" >"$ird/lib/modules/$name" ;;
    *.zst) zstd -qdc "$moddir/$rel" >"$ird/lib/modules/$name" ;;
    *.gz) gzip -dc "$moddir/$rel" >"$ird/lib/modules/$name" ;;
    *) cp "$moddir/$rel" "$ird/lib/modules/$name" ;;
  esac
  echo "$name" >>"$ird/modules.order"
done
log "initramfs modules: $(tr '\n' ' ' <"$ird/modules.order")"

cat >"$ird/init" <<'INIT'
#!/bin/busybox sh
# ferrotron tiny initramfs: load drivers, mount root=, switch_root to its /sbin/init.
export PATH=/bin
mount -t devtmpfs devtmpfs /dev 2>/dev/null || mount -t tmpfs tmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
while read -r m; do
  insmod "/lib/modules/$m" 2>/dev/null || echo "initramfs: insmod $m failed" >/dev/console
done </modules.order
echo "initramfs: modules loaded at $(cut -d' ' -f1 /proc/uptime)s" >/dev/console

root=/dev/vda rootfstype=ext4 rootflags='' init=/sbin/init mode=rw
for arg in $(cat /proc/cmdline); do
  case $arg in
    root=*) root=${arg#root=} ;;
    rootfstype=*) rootfstype=${arg#rootfstype=} ;;
    rootflags=*) rootflags=${arg#rootflags=} ;;
    init=*) init=${arg#init=} ;;
    ro) mode=ro ;;
    rw) mode=rw ;;
  esac
done

i=0
while [ ! -b "$root" ]; do
  i=$((i + 1))
  if [ $i -gt 500 ]; then
    echo "initramfs: root device $root did not appear; dropping to a shell" >/dev/console
    exec sh </dev/console >/dev/console 2>&1
  fi
  sleep 0.02
done
opts=$mode
[ -n "$rootflags" ] && opts=$opts,$rootflags
if ! mount -t "$rootfstype" -o "$opts" "$root" /newroot; then
  echo "initramfs: cannot mount $root; dropping to a shell" >/dev/console
  exec sh </dev/console >/dev/console 2>&1
fi
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot "$init"
INIT
chmod 0755 "$ird/init"
(cd "$ird" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet) \
  >"$tmp/$stem.initrd"

# ---------------------------------------------------------------- root file system
r=$tmp/root
mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,usr/lib/openssh,lib/x86_64-linux-gnu,lib64,etc/dropbear,etc/init.d} \
  "$r"/{dev,proc,sys,run,tmp,root/.ssh,var/log,var/tmp,mnt,home}
chmod 1777 "$r/tmp" "$r/var/tmp"
chmod 0700 "$r/root" "$r/root/.ssh"
ln -s ../run "$r/var/run"

cp /bin/busybox "$r/bin/busybox"
# Every applet, at the path busybox itself names (bin/sh, sbin/init, usr/bin/sha256sum, ...).
while read -r p; do
  [[ $p == linuxrc || -e $r/$p ]] && continue
  d=$(dirname "$p")
  rel=$(realpath -m --relative-to="/$d" /bin/busybox)
  ln -s "$rel" "$r/$p"
done < <(busybox --list-full)
[[ -L $r/bin/sh && -L $r/sbin/init ]] || die "busybox applet links missing"

cp /usr/sbin/dropbear "$r/usr/sbin/dropbear"
cp /usr/bin/dropbearconvert /usr/bin/dropbearkey "$r/usr/bin/"
cp "$sftp_server" "$r/usr/lib/sftp-server"
ln -s ../sftp-server "$r/usr/lib/openssh/sftp-server"
# Shared libraries of the dynamic binaries (glibc >= 2.34 has nss_files built in).
for lib in $(ldd "$r/usr/sbin/dropbear" "$r/usr/bin/dropbearconvert" "$r/usr/bin/dropbearkey" \
  "$r/usr/lib/sftp-server" | awk '/=> \// { print $3 } /^\t\/lib64\// { print $1 }' | sort -u); do
  case $lib in
    /lib64/*) cp -L "$lib" "$r$lib" ;;
    *) cp -L "$lib" "$r/lib/x86_64-linux-gnu/$(basename "$lib")" ;;
  esac
done
[[ -e $r/lib64/ld-linux-x86-64.so.2 ]] || cp -L /lib64/ld-linux-x86-64.so.2 "$r/lib64/"

cat >"$r/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$r/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
printf 'root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n' >"$r/etc/shadow"
chmod 0600 "$r/etc/shadow"
printf '/bin/sh\n/bin/ash\n' >"$r/etc/shells"
printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' >"$r/etc/nsswitch.conf"
echo ferrotron-tiny >"$r/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' >"$r/etc/hosts"
: >"$r/etc/resolv.conf"
cat >"$r/etc/profile" <<'EOF'
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=${HOME:-/root}
EOF
cat >"$r/etc/fstab" <<'EOF'
/dev/vda / ext4 rw 0 0
EOF
cat >"$r/etc/os-release" <<EOF
ID=ferrotron-tiny
NAME="ferrotron tiny"
VERSION_ID=1
PRETTY_NAME="ferrotron tiny 1 (busybox $(busybox | head -n1 | awk '{print $2}'), kernel $kver)"
EOF

cat >"$r/etc/inittab" <<'EOF'
# busybox init
::sysinit:/etc/init.d/rcS
::respawn:/usr/sbin/dropbear -F -E -s -p 22 -r /etc/dropbear/dropbear_ed25519_host_key 2>>/var/log/dropbear.log
::ctrlaltdel:/sbin/poweroff
::shutdown:/bin/umount -a -r
EOF

cat >"$r/etc/init.d/rcS" <<'EOF'
#!/bin/sh
# ferrotron tiny: boot-time setup (network, keys from the cidata seed). dropbear is started by
# init (inittab) once this script returns.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
umask 022
say() { echo "ferrotron-tiny: $*" >/dev/console; }

mounted() { grep -q " $1 " /proc/mounts 2>/dev/null; }
mounted /proc || mount -t proc proc /proc
mounted /sys || mount -t sysfs sysfs /sys
mounted /dev || mount -t devtmpfs devtmpfs /dev
TRACE=
grep -qw ferrotron.trace /proc/cmdline && TRACE=1
trace() { [ -z "$TRACE" ] || say "$* at $(cut -d' ' -f1 /proc/uptime)s"; }
trace "rcS start"
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mkdir -p /run/ferrotron-seed
hostname -F /etc/hostname
ip link set lo up

# DHCP on eth0 in the background (udhcpc forks once it has a lease and keeps renewing).
if ip link show eth0 >/dev/null 2>&1; then
  udhcpc -i eth0 -b -S -t 20 -T 1 -A 1 -s /etc/udhcpc.script -x hostname:"$(hostname)" \
    >/dev/null 2>&1 &
  dhcp_pid=$!
else
  say "no eth0"
fi

# The seed: ISO9660 labelled cidata (normally the second virtio disk, /dev/vdb).
seed=
i=0
while [ $i -lt 100 ]; do
  seed=$(findfs LABEL=cidata 2>/dev/null) && break
  for d in /dev/vdb /dev/sr0; do
    [ -b $d ] && mount -t iso9660 -o ro $d /run/ferrotron-seed 2>/dev/null && {
      seed=$d; umount /run/ferrotron-seed; break 2; }
  done
  i=$((i + 1)); usleep 50000
done
trace "seed $seed found"
hk=/etc/dropbear/dropbear_ed25519_host_key
if [ -n "$seed" ] && mount -t iso9660 -o ro "$seed" /run/ferrotron-seed; then
  s=/run/ferrotron-seed
  if [ -f $s/ferrotron/ssh_host_ed25519_key ]; then
    rm -f /etc/dropbear/dropbear_*_host_key
    dropbearconvert openssh dropbear $s/ferrotron/ssh_host_ed25519_key $hk >/dev/null 2>&1 \
      || say "cannot convert the seed host key"
    chmod 600 $hk
    trace "host key installed"
  else
    say "seed has no ferrotron/ssh_host_ed25519_key"
  fi
  if [ -f $s/ferrotron/authorized_keys ]; then
    mkdir -p /root/.ssh && chmod 700 /root/.ssh
    cat $s/ferrotron/authorized_keys >/root/.ssh/authorized_keys
    chmod 600 /root/.ssh/authorized_keys
  else
    say "seed has no ferrotron/authorized_keys"
  fi
  h=$(sed -n 's/^local-hostname:[[:space:]]*//p' $s/meta-data 2>/dev/null | tr -d "\"' \r")
  [ -n "$h" ] && hostname "$h" && echo "$h" >/etc/hostname
  umount $s
else
  say "no cidata seed found"
fi
if [ ! -s $hk ]; then
  say "no pinned host key: generating a random one"
  dropbearkey -t ed25519 -f $hk >/dev/null 2>&1
fi
trace "keys done"
[ -n "${dhcp_pid:-}" ] && wait "$dhcp_pid"
say "ready at $(cut -d' ' -f1 /proc/uptime)s: $(ip -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}')"
EOF
chmod 0755 "$r/etc/init.d/rcS"

cat >"$r/etc/udhcpc.script" <<'EOF'
#!/bin/sh
# busybox udhcpc hook
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" ${broadcast:+broadcast "$broadcast"} dev "$interface"
    for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    : >/etc/resolv.conf.new
    [ -n "$domain" ] && echo "search $domain" >>/etc/resolv.conf.new
    for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf.new; done
    mv /etc/resolv.conf.new /etc/resolv.conf
    ;;
esac
exit 0
EOF
chmod 0755 "$r/etc/udhcpc.script"

make_qcow2 "$r" "$ROOT_SIZE" tinyroot "$tmp/$stem.qcow2" "$tmp"

write_meta_json "$tmp/$stem.json" \
  distro tiny release 1 flavor base arch x86_64 \
  kernel "$stem.vmlinux" initrd "$stem.initrd" cmdline "$CMDLINE" \
  boot direct user root built_at "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  kernel_version "$kver" image "$stem.qcow2" \
  memory_mib 256 vcpus 1 timeout_s 120

publish "$outdir" "$stem" "$tmp"
t1=$(date +%s.%N)
log "built $outdir/$stem.qcow2 in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
ls -l "$outdir/$stem".* >&2
