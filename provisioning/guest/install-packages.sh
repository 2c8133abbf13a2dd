#!/bin/sh
# Run by `ferrotron image build` in the build instance for a recipe's `packages` (file and URL
# sources; debootstrap sources install theirs in the chroot): installs PACKAGE... with the
# image's own package manager. The instance needs to reach its distribution's mirrors.
#
#   install-packages.sh PACKAGE...
set -eu
[ $# -gt 0 ] || exit 0
if command -v dnf >/dev/null 2>&1; then
  dnf -y --setopt=install_weak_deps=False install "$@"
  dnf clean all
elif command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get -q update
  apt-get -q -y --no-install-recommends install "$@"
  apt-get clean
elif command -v zypper >/dev/null 2>&1; then
  zypper --non-interactive install --no-recommends "$@"
elif command -v apk >/dev/null 2>&1; then
  apk add --no-cache "$@"
else
  echo "install-packages: no package manager (dnf, apt-get, zypper, apk) in this image" >&2
  exit 1
fi
