#!/bin/sh
# Usage: report.sh ITEM ARTIFACTSDIR STATUS — ResultsYAML from sha256sum -c output.
item=${1:-payload} artifacts=$2 status=$3
ok=$(grep -c ': OK$' "$artifacts/sha256sum.txt")
bad=$(grep -c ': FAILED' "$artifacts/sha256sum.txt")
if [ "$status" = 0 ]; then outcome=PASSED; else outcome=FAILED; fi
cat <<YAML
results:
  - item: $item
    type: compose
    outcome: $outcome
    note: "$ok verified, $bad mismatched"
    artifact: $artifacts/sha256sum.txt
    files_ok: $ok
    files_failed: $bad
YAML
