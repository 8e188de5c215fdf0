#!/usr/bin/env bash
# Builds the binary to ship and to measure: the `dist` profile (whole-program optimisation),
# linked statically against the C library. A sidecar then maps no shared libc, libm or
# loader pages: about 0.8 MiB less resident memory per sidecar. Host names are still resolved
# through the system's NSS configuration, which a static glibc loads at run time from the
# glibc it was built with.
#
# The functions a sidecar runs (scripts/sidecar-functions.txt) are laid out together at the
# start of the code, so that a sidecar maps mostly pages of the binary it uses: 5.5 MiB
# resident when idle instead of 9.6. When the list no longer matches the binary's symbols
# (a new Rust toolchain or new dependency versions rename them), this says so; run
# scripts/sidecar-functions.sh to write it again.
#
#   scripts/dist.sh            # writes target/x86_64-unknown-linux-gnu/dist/weft and prints its path
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target="$(rustc -vV | sed -n 's/^host: //p')"
functions="$PWD/scripts/sidecar-functions.txt"
link_args=()
if [[ -s $functions ]]; then
  # Named by its content, so that cargo links again when the list changes.
  ordering="$PWD/target/sidecar-functions-$(sha256sum "$functions" | cut -c1-16).txt"
  mkdir -p target && cp "$functions" "$ordering"
  link_args=(-C "link-arg=-Wl,--symbol-ordering-file=$ordering"
    -C link-arg=-Wl,--no-warn-symbol-ordering)
fi
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo rustc --profile dist -p weft-cli --bin weft --target "$target" -- "${link_args[@]}" >&2
bin="target/$target/dist/weft"
if [[ -s $functions ]]; then
  listed=$(grep -c . "$functions")
  placed=$(nm --defined-only "$bin" | awk '{print $3}' | sort -u | comm -12 - <(sort -u "$functions") | wc -l)
  if (( placed * 10 < listed * 9 )); then
    echo "dist.sh: only $placed of the $listed functions in scripts/sidecar-functions.txt are in" \
      "the binary, so a sidecar will map more of it (about 4 MiB more resident memory);" \
      "run scripts/sidecar-functions.sh to write the list again" >&2
  fi
fi
echo "$bin"
