#!/usr/bin/env bash
# Builds kind at the version crates/operator/e2e/go/kind/go.mod pins, from the Go module proxy,
# into a cache outside the checkout, and prints that directory (<dir>/kind). A hit costs nothing;
# cold it takes about a minute. Low priority, one core (FERROKV_GO_CPUS widens it).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mod="$root/crates/operator/e2e/go/kind"
version="$(awk '$1 == "require" && $2 == "sigs.k8s.io/kind" { print $3 }' "$mod/go.mod")"
[ -n "$version" ] || { echo "build-kind: no sigs.k8s.io/kind version in $mod/go.mod" >&2; exit 1; }
exec nice -n 10 taskset -c "${FERROKV_GO_CPUS:-0}" "$root/scripts/go-tools.sh" "$mod" "kind-$version" kind=sigs.k8s.io/kind
