#!/usr/bin/env bash
# Builds the ferrokv server binary of commit 29f8bdd (the last one whose raft entries use
# ferrokv's own encoding, before etcd's InternalRaftRequest) into a cache outside the checkout and
# prints the binary's path. tests/tests/upgrade.rs rolls a cluster of this binary to the current
# one. A cache hit costs nothing; a cold build takes several minutes on 2 cores.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
commit="${FERROKV_OLD_COMMIT:-29f8bdd}"
cache="${HOME}/.cache/ferrokv/ferrokv-${commit}"
bin="${cache}/ferrokv"
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$cache"
work="$(mktemp -d "${cache}/build.XXXXXX")"
# The source tree and the target dir are temporary: only the binary is kept.
trap 'rm -rf "$work"' EXIT
git -C "$root" archive --format=tar "$commit" | tar -x -C "$work"
mkdir -p "$work/src-target"
(
  cd "$work"
  CARGO_TARGET_DIR="$work/src-target" CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}" \
    cargo build -p ferrokv --bin ferrokv >&2
)
install -m 0755 "$work/src-target/debug/ferrokv" "$bin.tmp"
mv "$bin.tmp" "$bin"
echo "$bin"
