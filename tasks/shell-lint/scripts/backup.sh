#!/bin/sh
# Copies a directory into a dated backup folder.
set -eu
src=$1
dest="/var/backups/$(date +%Y%m%d)"
mkdir -p "$dest"
cp -a "$src" "$dest/"
