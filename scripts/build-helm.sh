#!/usr/bin/env bash
# Builds helm at the version tests/helm/go.mod pins (from the Go module proxy) into a cache
# outside the checkout and prints that directory. A cache hit costs nothing; cold, about 2 min.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
version="$(awk '$1 == "require" && $2 == "helm.sh/helm/v3" { print $3 }' "$root/tests/helm/go.mod" | head -1)"
[ -n "$version" ] || { echo "build-helm: no helm.sh/helm/v3 version in tests/helm/go.mod" >&2; exit 1; }
GO_TOOLS_LDFLAGS="-X helm.sh/helm/v3/internal/version.version=$version" \
  exec "$root/scripts/go-tools.sh" "$root/tests/helm" "helm-$version" helm=helm.sh/helm/v3/cmd/helm
