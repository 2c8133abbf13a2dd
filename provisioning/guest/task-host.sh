#!/bin/sh
# Provisioning script for ferrotron's Debian images (recipe images/debian-12.yaml): checks
# that the image has what ferrotron and Taskotron-style tasks rely on, and records which build
# the image is in /etc/ferrotron-image (FERROTRON_* are set by `ferrotron image build`).
set -eu
missing=
for c in sh tar python3 sshd; do
  command -v "$c" >/dev/null 2>&1 || missing="$missing $c"
done
[ -x /usr/lib/sftp-server ] || [ -x /usr/lib/openssh/sftp-server ] || missing="$missing sftp-server"
if [ -n "$missing" ]; then
  echo "task-host: missing:$missing" >&2
  exit 1
fi
echo "task-host: $(python3 --version 2>&1), $(tar --version | head -n1)"
if command -v cloud-init >/dev/null 2>&1; then
  echo "task-host: cloud-init $(cloud-init --version 2>&1 | awk '{print $NF}')"
fi
cat >/etc/ferrotron-image <<INFO
FERROTRON_IMAGE=${FERROTRON_IMAGE:-unknown}
FERROTRON_RECIPE=${FERROTRON_RECIPE:-unknown}
FERROTRON_RECIPE_SHA256=${FERROTRON_RECIPE_SHA256:-unknown}
FERROTRON_BUILD_ID=${FERROTRON_BUILD_ID:-unknown}
INFO
echo "task-host: wrote /etc/ferrotron-image"
