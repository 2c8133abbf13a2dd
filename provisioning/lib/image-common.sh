# Shared helpers for the ferrotron image build scripts. Source it; do not run it.
# shellcheck shell=bash

log() { printf '%s: %s\n' "${PROG:-build}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

need_cmds() {
  local c missing=()
  for c in "$@"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
  ((${#missing[@]} == 0)) || die "missing commands: ${missing[*]} (run provisioning/host-setup.sh)"
}

# Build stamp: UTC, YYMMDD_HHMM, as in the base image names (newest wins).
build_stamp() { date -u +%y%m%d_%H%M; }

# extract_vmlinux VMLINUZ OUT
# Debian's x86 bzImage carries a compressed ELF (zstd in the 6.12 cloud kernel, LZ4 in
# bookworm's 6.1).
# Find a compression magic and decompress from there with zstdcat/xzcat/lz4cat/zcat, which tolerate
# the trailing bytes that make `zstd -d` fail. The first offset whose output is ELF wins.
extract_vmlinux() {
  local in=$1 out=$2 off magic tool
  for magic in '\x28\xb5\x2f\xfd:zstdcat' '\xfd\x37\x7a\x58\x5a\x00:xzcat' '\x02\x21\x4c\x18:lz4cat' \
    '\x1f\x8b\x08:zcat'; do
    tool=${magic##*:}
    command -v "$tool" >/dev/null || continue
    for off in $(LC_ALL=C grep -aboP "${magic%:*}" "$in" | cut -d: -f1); do
      tail -c +"$((off + 1))" "$in" | "$tool" >"$out" 2>/dev/null || true
      if [[ $(head -c 4 "$out" 2>/dev/null | od -An -tx1 | tr -d ' \n') == 7f454c46 ]]; then
        return 0
      fi
    done
  done
  rm -f "$out"
  die "no compressed ELF kernel found in $in"
}

# json_escape STRING -> JSON string literal (no surrounding quotes needed by caller)
json_str() {
  local s=$1
  s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\n'/\\n}; s=${s//$'\t'/\\t}
  printf '"%s"' "$s"
}

# write_meta_json OUT key value key value ... (all values are strings)
write_meta_json() {
  local out=$1; shift
  {
    printf '{'
    local first=1
    while (($#)); do
      ((first)) || printf ','
      first=0
      printf '\n  %s: %s' "$(json_str "$1")" "$(json_str "$2")"
      shift 2
    done
    printf '\n}\n'
  } >"$out"
}

# make_qcow2 ROOTDIR SIZE LABEL OUT.qcow2 TMPDIR
# ext4 filled from ROOTDIR with mkfs.ext4 -d (no loop mounts, no root needed for this step),
# then converted to qcow2 (zero blocks are skipped).
make_qcow2() {
  local root=$1 size=$2 label=$3 out=$4 tmp=$5
  local raw=$tmp/root.raw
  rm -f "$raw"
  truncate -s "$size" "$raw"
  mkfs.ext4 -q -F -L "$label" -d "$root" -E root_owner=0:0 "$raw" \
    || die "mkfs.ext4 failed"
  qemu-img convert -q -f raw -O qcow2 -o cluster_size=65536 "$raw" "$out" \
    || die "qemu-img convert failed"
  rm -f "$raw"
}

# publish OUTDIR STEM TMPDIR: move STEM.{vmlinux,initrd,json} then STEM.qcow2 (last, so a
# directory scan never sees a qcow2 without its sidecars) from TMPDIR into OUTDIR.
# The files are first copied next to their final names under a dot-prefixed temp name (same
# file system) and then renamed, so OUTDIR never holds a half-written image.
publish() {
  local outdir=$1 stem=$2 tmp=$3 ext
  for ext in vmlinux initrd json qcow2; do
    [[ -f $tmp/$stem.$ext ]] || die "internal: $tmp/$stem.$ext missing"
  done
  for ext in vmlinux initrd json qcow2; do
    mv -f "$tmp/$stem.$ext" "$outdir/.partial-$stem.$ext"
  done
  for ext in vmlinux initrd json qcow2; do
    chmod 0644 "$outdir/.partial-$stem.$ext"
    mv -f "$outdir/.partial-$stem.$ext" "$outdir/$stem.$ext"
  done
}
