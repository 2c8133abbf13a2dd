#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine: installs qemu/libvirt, starts libvirtd,
# builds ferrotron, then runs an example task in a disposable VM on the tiny image (built on
# first use), with results in the embedded SQLite store.
#
#   provisioning/demo.sh                 # the sha256-manifest example task
#   provisioning/demo.sh tasks/shell-lint -t file -i scripts
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

provisioning/host-setup.sh
if [[ $# -eq 0 ]]; then
  set -- tasks/sha256-manifest -t compose -i payload
fi
exec cargo run --release --quiet -- run --backend libvirt --image tiny "$@"
