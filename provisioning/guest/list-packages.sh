#!/bin/sh
# Run by `ferrotron image build` in the build instance: prints the installed packages, one
# `NAME VERSION` a line, for the image's sidecar. Prints nothing on images without a package
# database (the tiny image).
if command -v dpkg-query >/dev/null 2>&1; then
  dpkg-query -W -f '${db:Status-Abbrev} ${Package} ${Version}\n' | awk '$1 ~ /^ii/ { print $2, $3 }'
elif command -v rpm >/dev/null 2>&1; then
  rpm -qa --qf '%{NAME} %{EPOCHNUM}:%{VERSION}-%{RELEASE}.%{ARCH}\n' | sed 's/ 0:/ /'
elif command -v apk >/dev/null 2>&1; then
  apk info -v 2>/dev/null | sed -E 's/^(.*)-([^-]+-r[0-9]+)$/\1 \2/'
fi
exit 0
