#!/usr/bin/env bash
# Builds Go programs of a wrapper module under tests/ (whose go.mod and go.sum pin them) into a
# cache outside the checkout and prints the cache directory:
#   scripts/go-tools.sh <module dir> <cache name> <binary>=<package> ...
# The cache key covers go.mod and go.sum, so a changed pin never reuses stale binaries, and a hit
# costs nothing. GO_TOOLS_LDFLAGS is passed to the linker. Test tooling only: nothing here ships.
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 <module dir> <cache name> <binary>=<package> ..." >&2; exit 2; }
mod="$(cd "$1" && pwd)"
name="$2"
shift 2
key="$(cat "$mod/go.mod" "$mod/go.sum" | sha256sum | cut -c1-12)"
out="${FERROKV_CACHE:-$HOME/.cache/ferrokv}/$name-$key"
have=1
for spec in "$@"; do [ -x "$out/${spec%%=*}" ] || have=0; done
if [ "$have" = 1 ]; then
  echo "$out"
  exit 0
fi
command -v go >/dev/null || { echo "go-tools: go is not installed" >&2; exit 1; }
echo "go-tools: building ${*%%=*} into $out" >&2
tmp="$out.tmp.$$"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
(
  cd "$mod"
  export CGO_ENABLED=0 GOTOOLCHAIN=local GOWORK=off GOFLAGS=-mod=mod
  for spec in "$@"; do
    go build -trimpath -ldflags "-s -w ${GO_TOOLS_LDFLAGS:-}" -o "$tmp/${spec%%=*}" "${spec#*=}"
  done
)
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "$out"
