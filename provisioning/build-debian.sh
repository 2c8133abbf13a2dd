#!/usr/bin/env bash
# Builds a ferrotron Debian guest image with debootstrap, offline except for the Debian
# mirror. Needs root (debootstrap, chroot). `ferrotron image build` runs it for recipes with a
# `debootstrap` source; the `debian` and `debian-cloudinit` recipes run it directly.
#
#   provisioning/build-debian.sh OUTDIR [--cloud-init] [--no-cache] [--suite S] [--release R]
#       [--flavor F] [--variant V] [--include PKG,...] [--packages PKG,...] [--cache-dir DIR]
#
#   (default)       bookworm (12), flavor `minimal`: the light `ferrotron-seed.service` installs
#                   the pinned SSH host key and root's authorized_keys from the cidata seed's
#                   ferrotron/ files
#   --cloud-init    flavor `cloudinit` with cloud-init (NoCloud) reading the seed's
#                   user-data/meta-data instead, like a stock cloud image (adds ~12-17 s to the
#                   boot under TCG); same as --flavor cloudinit --packages cloud-init
#   --suite, --release, --variant   debootstrap suite, its release number (the image name's
#                   RELEASE), debootstrap variant (default minbase)
#   --include       more packages for debootstrap's --include (the base set below is always in)
#   --packages      packages installed with apt-get in the chroot after debootstrap (resolves
#                   virtual packages); with cloud-init among them the image uses cloud-init
#   --flavor        the image name's FLAVOR
#   --cache-dir     where debootstrap trees and packages are cached (default OUTDIR/.cache)
#   --no-cache      ignore and do not write the cache
#
# Produces in OUTDIR: YYMMDD_HHMM-debian-RELEASE-FLAVOR-x86_64.{qcow2,vmlinux,initrd,json}
# Direct kernel boot: the Debian cloud kernel installed in the image (uncompressed to .vmlinux)
# and the initramfs-tools initrd built inside the chroot; root=/dev/vda (ext4, whole disk).
#
# Cache (optional, safe to delete): CACHE/debootstrap/*.tar.zst holds the unconfigured trees
# (SUITE-VARIANT-KEY: debootstrap output; SUITE-VARIANT-apt-KEY: plus the --packages), keyed by
# suite, mirror and package sets; CACHE/debs the downloaded packages.
#
# Environment: DEBIAN_MIRROR (default: the host's Debian mirror), DEBIAN_ROOT_SIZE (default 4G),
# DEBIAN_CMDLINE (the kernel command line recorded in the sidecar).
set -euo pipefail
# shellcheck disable=SC2034 # used by lib/image-common.sh
PROG=build-debian
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/image-common.sh
. "$here/lib/image-common.sh"

usage() { echo "usage: $0 OUTDIR [--cloud-init] [--no-cache] [--suite S] [--release R] [--flavor F] [--variant V] [--include PKGS] [--packages PKGS] [--cache-dir DIR]" >&2; exit 2; }
outdir='' flavor=minimal use_cache=1 cache_dir=''
SUITE=bookworm RELEASE=12 variant=minbase include='' extra=()
while (($#)); do
  case $1 in
    --cloud-init) flavor=cloudinit; extra+=(cloud-init); shift ;;
    --no-cache) use_cache=0; shift ;;
    --suite|--release|--flavor|--variant|--include|--packages|--cache-dir)
      (($# >= 2)) || usage
      case $1 in
        --suite) SUITE=$2 ;;
        --release) RELEASE=$2 ;;
        --flavor) flavor=$2 ;;
        --variant) variant=$2 ;;
        --include) include=$2 ;;
        --packages) IFS=, read -r -a more <<<"$2"; extra+=("${more[@]}") ;;
        --cache-dir) cache_dir=$2 ;;
      esac
      shift 2 ;;
    -h|--help) usage ;;
    -*) usage ;;
    *) [[ -z $outdir ]] || usage; outdir=$1; shift ;;
  esac
done
[[ -n $outdir ]] || usage
[[ $EUID -eq 0 ]] || die "must run as root (debootstrap, chroot)"
need_cmds debootstrap chroot mkfs.ext4 qemu-img zstd zstdcat tar

# cryptomgr.notests: skip the crypto self-tests at boot (~1 s under TCG)
CMDLINE=${DEBIAN_CMDLINE:-"console=ttyS0 root=/dev/vda rw quiet cryptomgr.notests"}
ROOT_SIZE=${DEBIAN_ROOT_SIZE:-4G}
mirror=${DEBIAN_MIRROR:-$(awk '/^URIs:/ && $2 ~ /\/debian\/?$/ {print $2; exit}' \
  /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
mirror=${mirror:-http://deb.debian.org/debian}

# debootstrap's own resolver handles the base set; extras go through apt in the chroot (it
# resolves virtual packages, e.g. cloud-init -> python3-cryptography -> python3-cffi-backend-api-*).
pkgs=systemd-sysv,udev,openssh-server,python3,iproute2,kmod,linux-image-cloud-amd64,initramfs-tools,zstd
# --include adds to the base set; what it already has changes nothing (nor the cache key).
IFS=, read -r -a more <<<"$include"
for p in "${more[@]}"; do
  [[ ,$pkgs, == *",$p,"* ]] || pkgs+=",$p"
done
# The apt extras, sorted and unique, so the cache key does not depend on their order.
if ((${#extra[@]})); then
  mapfile -t extra < <(printf '%s\n' "${extra[@]}" | sort -u)
fi

mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
stamp=$(build_stamp)
stem=$stamp-debian-$RELEASE-$flavor-x86_64
cache_dir=${cache_dir:-$outdir/.cache}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ferrotron-debian.XXXXXX")
r=$tmp/root
cleanup() {
  local rc=$? m
  # A second SIGTERM (ferrotron signals the whole process group) must not cut the clean-up
  # short: what runs from here ignores it.
  trap '' INT TERM
  # never rm -rf through a live bind mount
  for m in "$r/proc" "$r/sys" "$r/dev/pts" "$r/dev"; do
    if mountpoint -q "$m" 2>/dev/null; then umount -l "$m" || true; fi
  done
  if grep -q " $tmp/" /proc/mounts; then
    log "mounts left under $tmp; not removing it"
  else
    rm -rf "$tmp"
  fi
  rm -f "$outdir/.partial-$stem".*
  [[ -n ${cache_partial:-} ]] && rm -f "$cache_partial"
  ((rc == 0)) || log "failed (exit $rc); nothing was written to $outdir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t0=$(date +%s.%N)
log "$SUITE $flavor from $mirror -> $stem"

# ---------------------------------------------------------------- debootstrap (cached)
chroot_mounts() {
  mount -t proc proc "$r/proc"
  mount -t sysfs sysfs "$r/sys"
  mount --bind /dev "$r/dev"
  mount --bind /dev/pts "$r/dev/pts"
}
chroot_umounts() {
  local m
  for m in "$r/dev/pts" "$r/dev" "$r/sys" "$r/proc"; do umount "$m"; done
}
in_root() { chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 "$@"; }
tree_key() { printf '%s|%s|%s|%s|%s' "$SUITE" "$mirror" "$pkgs" "$variant" "$*" | sha256sum | cut -c1-12; }
save_tree() { # save_tree TAR
  ((use_cache)) || return 0
  mkdir -p "$(dirname "$1")"
  cache_partial=$1.partial.$$
  tar -C "$r" --numeric-owner --xattrs --xattrs-include='*' -cf - . | zstd -q -T0 -3 >"$cache_partial"
  mv -f "$cache_partial" "$1"
  cache_partial=
  log "cached the tree as $1"
}
load_tree() { # load_tree TAR
  log "using cached tree $(basename "$1")"
  zstd -dc -T0 "$1" | tar -C "$r" --numeric-owner --xattrs --xattrs-include='*' -xpf -
}
base_tar=$cache_dir/debootstrap/$SUITE-$variant-$(tree_key).tar.zst
full_tar=$cache_dir/debootstrap/$SUITE-$variant-apt-$(tree_key "${extra[@]}").tar.zst
mkdir -p "$r"
if ((use_cache)) && ((${#extra[@]})) && [[ -f $full_tar ]]; then
  load_tree "$full_tar"
else
  if ((use_cache)) && [[ -f $base_tar ]]; then
    load_tree "$base_tar"
  else
    dbopts=("--variant=$variant" "--include=$pkgs" --components=main)
    if ((use_cache)); then
      mkdir -p "$cache_dir/debs"
      dbopts+=("--cache-dir=$cache_dir/debs")
    fi
    log "debootstrap ${dbopts[*]}"
    if ! debootstrap "${dbopts[@]}" "$SUITE" "$r" "$mirror" >"$tmp/debootstrap.log" 2>&1; then
      tail -n 30 "$tmp/debootstrap.log" >&2
      die "debootstrap failed"
    fi
    rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/* 2>/dev/null || true
    save_tree "$base_tar"
  fi
  if ((${#extra[@]})); then
    log "apt-get install ${extra[*]}"
    printf 'deb %s %s main\n' "$mirror" "$SUITE" >"$r/etc/apt/sources.list"
    cp /etc/resolv.conf "$r/etc/resolv.conf"
    printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"; chmod 0755 "$r/usr/sbin/policy-rc.d"
    chroot_mounts
    if ! { in_root apt-get -q update && in_root env DEBIAN_FRONTEND=noninteractive \
        apt-get -q -y --no-install-recommends -o Dpkg::Options::=--force-confold \
        install "${extra[@]}" && in_root apt-get clean; } >"$tmp/apt.log" 2>&1; then
      tail -n 30 "$tmp/apt.log" >&2
      chroot_umounts
      die "apt-get install ${extra[*]} failed"
    fi
    chroot_umounts
    rm -f "$r/usr/sbin/policy-rc.d"
    rm -rf "$r"/var/lib/apt/lists/* 2>/dev/null || true
    save_tree "$full_tar"
  fi
fi
t_db=$(date +%s.%N)

# ---------------------------------------------------------------- configuration
kver=$(ls -1 "$r"/boot/vmlinuz-* | sed 's|.*/vmlinuz-||' | sort -V | tail -n 1)
[[ -n $kver ]] || die "no kernel in the chroot"

echo "ferrotron-debian" >"$r/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tferrotron-debian\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$r/etc/hosts"
printf '# root is the whole virtio disk\n/dev/vda / ext4 rw,errors=remount-ro 0 0\n' >"$r/etc/fstab"
# Empty machine-id: systemd makes a fresh one at every boot of every instance.
: >"$r/etc/machine-id"
rm -f "$r/var/lib/dbus/machine-id"
# apt sources (the image can still install packages where it reaches this mirror).
printf 'deb %s %s main\n' "$mirror" "$SUITE" >"$r/etc/apt/sources.list"
# No resolver is configured (networkd without resolved does not write resolv.conf); the guests
# have no internet anyway. Tasks that need DNS can write this file.
: >"$r/etc/resolv.conf"

# Network: systemd-networkd DHCPv4 on any ethernet NIC (passt serves DHCP).
mkdir -p "$r/etc/systemd/network"
cat >"$r/etc/systemd/network/80-ferrotron-dhcp.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no

[DHCPv4]
UseDomains=yes
EOF

# SSH: only the pinned ed25519 host key (installed at boot from the seed), keys only.
rm -f "$r"/etc/ssh/ssh_host_*
mkdir -p "$r/etc/ssh/sshd_config.d"
cat >"$r/etc/ssh/sshd_config.d/10-ferrotron.conf" <<'EOF'
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
EOF
install -d -m 0700 "$r/root/.ssh"
# Same SFTP server path as the tiny image (dropbear's default).
ln -sf openssh/sftp-server "$r/usr/lib/sftp-server"

# Units that cost boot time under TCG (one vCPU: everything that runs at boot competes with the
# path to sshd) and do nothing for a disposable test VM.
mask=(systemd-networkd-wait-online.service e2scrub_reap.service apt-daily.timer
  apt-daily-upgrade.timer dpkg-db-backup.timer fstrim.timer e2scrub_all.timer
  systemd-firstboot.service getty@tty1.service serial-getty@ttyS0.service getty-static.service
  systemd-update-utmp.service systemd-update-utmp-runlevel.service
  systemd-binfmt.service proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount
  dev-hugepages.mount dev-mqueue.mount sys-kernel-debug.mount sys-kernel-tracing.mount
  sys-fs-fuse-connections.mount modprobe@dm_mod.service modprobe@efi_pstore.service
  modprobe@fuse.service modprobe@loop.service modprobe@drm.service systemd-pstore.service)
for u in "${mask[@]}"; do ln -sf /dev/null "$r/etc/systemd/system/$u"; done
# Generators that only cost time here (no SysV scripts to wrap, no GPT auto-discovery).
mkdir -p "$r/etc/systemd/system-generators"
for g in systemd-sysv-generator systemd-gpt-auto-generator; do
  ln -sf /dev/null "$r/etc/systemd/system-generators/$g"
done
# isofs is a module: load it early, not on the seed's critical path.
echo isofs >"$r/etc/modules-load.d/ferrotron-seed.conf"
# Journal in memory only: no journal flush to disk on the boot's critical path.
mkdir -p "$r/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=16M\n' >"$r/etc/systemd/journald.conf.d/10-ferrotron.conf"
in_root systemctl enable systemd-networkd.service >/dev/null 2>&1 \
  || die "cannot enable systemd-networkd"

if [[ ! -f $r/etc/cloud/cloud.cfg ]]; then
  cat >"$r/usr/local/sbin/ferrotron-seed" <<'EOF'
#!/bin/sh
# Installs the pinned SSH host key and root's authorized_keys from the cidata seed
# (ferrotron/ssh_host_ed25519_key{,.pub}, ferrotron/authorized_keys) and sets the hostname from
# meta-data's local-hostname, then unmounts the seed. Every exec costs ~0.1-0.3 s under TCG at
# boot, so this uses shell builtins where it can (mount, 2x cp, umount).
set -eu
umask 077
mnt=/run/ferrotron-seed
[ -d $mnt ] || mkdir $mnt
mount -t iso9660 -o ro /dev/disk/by-label/cidata $mnt
trap 'umount $mnt || true' EXIT
s=$mnt/ferrotron
[ -f $s/ssh_host_ed25519_key ] || { echo "ferrotron-seed: no ferrotron/ssh_host_ed25519_key" >&2; exit 1; }
[ -f $s/authorized_keys ] || { echo "ferrotron-seed: no ferrotron/authorized_keys" >&2; exit 1; }
cp -f $s/ssh_host_ed25519_key $s/ssh_host_ed25519_key.pub /etc/ssh/
[ -d /root/.ssh ] || mkdir -m 0700 /root/.ssh
cp -f $s/authorized_keys /root/.ssh/authorized_keys
while IFS= read -r line; do
  case $line in
    local-hostname:*)
      h=${line#local-hostname:}; h=$(echo $h)   # trim (echo is a builtin)
      if [ -n "$h" ]; then echo "$h" >/proc/sys/kernel/hostname; echo "$h" >/etc/hostname; fi ;;
  esac
done <$mnt/meta-data
EOF
  chmod 0755 "$r/usr/local/sbin/ferrotron-seed"
  cat >"$r/etc/systemd/system/ferrotron-seed.service" <<'EOF'
[Unit]
Description=ferrotron: pinned SSH host key and authorized_keys from the cidata seed
Documentation=file:/usr/local/sbin/ferrotron-seed
# Early (no default dependencies): runs as soon as the seed's device shows up, in parallel with
# the rest of sysinit, instead of after basic.target.
DefaultDependencies=no
Requires=dev-disk-by\x2dlabel-cidata.device
After=dev-disk-by\x2dlabel-cidata.device local-fs.target systemd-remount-fs.service
Before=ssh.service shutdown.target
Conflicts=shutdown.target
ConditionPathExists=/usr/local/sbin/ferrotron-seed

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/ferrotron-seed

[Install]
WantedBy=multi-user.target
RequiredBy=ssh.service
EOF
  in_root systemctl enable ferrotron-seed.service >/dev/null 2>&1 \
    || die "cannot enable ferrotron-seed.service"
else
  # cloud-init: NoCloud only (no probing of other datasources), no network config of its own
  # (systemd-networkd above does DHCP), no locale module (would run locale-gen), no grub-dpkg
  # (no boot loader here: direct kernel boot; it cost ~3 s of the single vCPU at boot).
  mkdir -p "$r/etc/cloud/cloud.cfg.d"
  cat >"$r/etc/cloud/cloud.cfg.d/90-ferrotron.cfg" <<'EOF'
datasource_list: [ NoCloud, None ]
network: {config: disabled}
EOF
  [[ -f $r/etc/cloud/cloud.cfg ]] || die "cloud-init not installed"
  sed -i -E '/^[[:space:]]*-[[:space:]]*(locale|grub-dpkg)[[:space:]]*$/d' "$r/etc/cloud/cloud.cfg"
  ! grep -qE '^[[:space:]]*-[[:space:]]*locale$' "$r/etc/cloud/cloud.cfg" || die "locale module still listed"
  rm -rf "$r/var/lib/cloud"/*
fi

# initrd: initramfs-tools in the chroot with only what mounting root=/dev/vda needs (ext4 is
# built into the cloud kernel): a small initrd boots faster under TCG than MODULES=most.
mkdir -p "$r/etc/initramfs-tools/conf.d"
printf 'MODULES=list\nCOMPRESS=zstd\n' >"$r/etc/initramfs-tools/conf.d/ferrotron.conf"
printf '%s\n' virtio_pci virtio_blk >>"$r/etc/initramfs-tools/modules"
chroot_mounts
in_root update-initramfs -u -k "$kver" >"$tmp/initramfs.log" 2>&1 \
  || { cat "$tmp/initramfs.log" >&2; chroot_umounts; die "update-initramfs failed"; }
chroot_umounts
[[ -f $r/boot/initrd.img-$kver ]] || die "no initrd for $kver"

extract_vmlinux "$r/boot/vmlinuz-$kver" "$tmp/$stem.vmlinux"
cp "$r/boot/initrd.img-$kver" "$tmp/$stem.initrd"

# Clean up what a rebuild or an instance does not need.
rm -rf "$r"/var/cache/apt/*.bin "$r"/var/lib/apt/lists/* "$r"/var/log/*.log "$r"/tmp/* \
  "$r"/var/tmp/* "$r"/root/.bash_history
find "$r/var/log" -type f -exec truncate -s 0 {} +

make_qcow2 "$r" "$ROOT_SIZE" debian-root "$tmp/$stem.qcow2" "$tmp"

# Boot timeouts for TCG on a loaded 2-core host (measured: 23-97 s minimal, 43-173 s cloud-init).
if [[ -f $r/etc/cloud/cloud.cfg ]]; then boot_timeout=420; else boot_timeout=240; fi
write_meta_json "$tmp/$stem.json" \
  distro debian release "$RELEASE" flavor "$flavor" arch x86_64 \
  kernel "$stem.vmlinux" initrd "$stem.initrd" cmdline "$CMDLINE" \
  boot direct user root built_at "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  kernel_version "$kver" image "$stem.qcow2" suite "$SUITE" \
  memory_mib 512 vcpus 1 timeout_s "$boot_timeout"

publish "$outdir" "$stem" "$tmp"
t1=$(date +%s.%N)
log "built $outdir/$stem.qcow2 in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s" \
  "(debootstrap/cache $(awk -v a="$t0" -v b="$t_db" 'BEGIN { printf "%.1f", b - a }') s)"
ls -l "$outdir/$stem".* >&2
