#!/usr/bin/env bash
# Regenerates crates/storage/src/empty.redb (the empty keyspace file with 4 MiB redb regions
# that every new keyspace starts from). Needed only when the redb version changes; the
# storage test `the_template_is_an_empty_keyspace_with_small_regions` says when.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/crates/storage/redb-template"
target="${CARGO_TARGET_DIR:-$root/target}/redb-template"
RUSTFLAGS="--cfg fuzzing" CARGO_TARGET_DIR="$target" cargo run --release --quiet -- "$root/crates/storage/src/empty.redb"
