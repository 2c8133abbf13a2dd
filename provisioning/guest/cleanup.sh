#!/bin/sh
# Run by `ferrotron image build` in the build instance after provisioning, right before it
# powers off: removes what belongs to this one boot and must not be baked into a base image,
# so that every instance cloned from it starts as a first boot with its own identity.
set -u
say() { echo "cleanup: $*"; }

# cloud-init: forget this instance (its seed, its per-instance state and logs), so the next
# boot reads the next instance's seed.
if command -v cloud-init >/dev/null 2>&1; then
  cloud-init clean --logs --seed || cloud-init clean --logs \
    || { echo "cleanup: cloud-init clean failed" >&2; exit 1; }
  say "cloud-init state cleaned"
fi

# Identity: an empty machine-id makes systemd generate a fresh one at the next boot.
if [ -f /etc/machine-id ]; then : >/etc/machine-id; fi
rm -f /var/lib/dbus/machine-id /var/lib/systemd/random-seed
# SSH host keys come from each instance's seed (cloud-init, ferrotron-seed or the tiny
# image's rcS); the build's login key must not stay.
rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub /etc/dropbear/dropbear_*_host_key
rm -f /root/.ssh/authorized_keys
for h in /home/*; do [ -f "$h/.ssh/authorized_keys" ] && rm -f "$h/.ssh/authorized_keys"; done
say "machine id, host keys and authorized keys removed"

# Caches, logs, temporary files.
if command -v apt-get >/dev/null 2>&1; then apt-get clean; fi
if command -v dnf >/dev/null 2>&1; then dnf clean all >/dev/null 2>&1 || true; fi
rm -rf /var/lib/dhcp/*.leases /var/lib/NetworkManager/*.lease /var/lib/systemd/network/* 2>/dev/null
if [ -d /var/log ]; then find /var/log -type f -exec truncate -s 0 {} + 2>/dev/null; fi
rm -rf /var/log/journal/* /root/.bash_history /root/.cache /tmp/* 2>/dev/null
# Our own scripts, last (the shell has read this one already).
rm -rf /var/tmp/ferrotron-build /var/tmp/ferrotron 2>/dev/null
sync
say "done"
