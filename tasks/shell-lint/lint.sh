#!/bin/sh
# Usage: lint.sh DIR ARTIFACTSDIR ITEM — prints ResultsYAML, one result per *.sh in DIR.
set -u
dir=$1 artifacts=$2 item=${3:-scripts}
if command -v shellcheck >/dev/null 2>&1; then
  tool="shellcheck -f gcc"
else
  tool="sh -n"
  echo "shellcheck not installed; falling back to a syntax check (sh -n)" >&2
fi
echo "results:"
for f in "$dir"/*.sh; do
  name=$(basename "$f")
  log="$artifacts/$name.lint.txt"
  if $tool "$f" >"$log" 2>&1; then outcome=PASSED; else outcome=FAILED; fi
  findings=$(grep -c . "$log")
  echo "$name: $outcome ($findings findings)" >&2
  cat "$log" >&2
  cat <<YAML
  - item: $item/$name
    type: file
    outcome: $outcome
    note: "$findings findings"
    artifact: $log
    linter: "${tool%% *}"
YAML
done
