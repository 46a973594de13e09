#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and kubectl at the version tests/kube/go.mod
# pins, from the Go module proxy, into a cache outside the checkout and prints that directory.
# A cache hit costs nothing; a cold build takes about 5-7 minutes on 2 cores.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mod="$root/tests/kube"
version="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 }' "$mod/go.mod")"
[ -n "$version" ] || { echo "build-kube: no k8s.io/kubernetes version in $mod/go.mod" >&2; exit 1; }
major="${version#v}"; major="${major%%.*}"
minor="${version#v*.}"; minor="${minor%%.*}"
ld=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
GO_TOOLS_LDFLAGS="$ld" exec "$root/scripts/go-tools.sh" "$mod" "kube-$version" \
  kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
  kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
  kubectl=k8s.io/kubernetes/cmd/kubectl
