#!/usr/bin/env bash
# Installs cargo-fuzz (from crates.io, pinned) into a cache outside the checkout and prints the
# directory holding its binary. `make fuzz` uses it; `make test` does not need it (the corpus
# replay test runs on stable). A cache hit costs nothing; cold, a few minutes of compiling.
set -euo pipefail
version=0.13.1
dir="$HOME/.cache/ferrokv/cargo-fuzz-$version"
if [ ! -x "$dir/bin/cargo-fuzz" ]; then
  cargo install --locked --quiet cargo-fuzz --version "$version" --root "$dir.tmp.$$" >&2
  rm -rf "$dir"
  mv "$dir.tmp.$$" "$dir"
fi
echo "$dir/bin"
