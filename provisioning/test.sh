#!/usr/bin/env bash
# Runs every check ferrotron has, on a fresh Debian 12 machine or an old one:
# installs and starts what the tests need, then format, lint and the whole test suite.
#
#   provisioning/test.sh            # everything
#   provisioning/test.sh -- store   # pass a filter through to cargo test
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

provisioning/host-setup.sh --test
eval "$(provisioning/test-postgres.sh)"

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test"
[[ "${1:-}" == "--" ]] && shift
cargo test --quiet "$@"
