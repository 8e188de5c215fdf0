#!/usr/bin/env bash
# The test command of Weft: formatting, lints and the whole test suite.
# It installs what the suite needs on a fresh machine, so CI and a new checkout run it as is.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "test.sh: cargo is not installed; install Rust with rustup first" >&2
  exit 1
fi
# rustfmt and clippy ship as rustup components; add them if this toolchain lacks them.
if command -v rustup >/dev/null 2>&1; then
  for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
  done
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
