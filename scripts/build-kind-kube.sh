#!/usr/bin/env bash
# Builds the node-side Kubernetes binaries a kind node image needs (kubelet, kubeadm, kube-proxy,
# kube-scheduler) at the version tests/kube/go.mod pins, from the Go module proxy, into a cache
# outside the checkout, and prints that directory. build-kube.sh builds the other three
# (kube-apiserver, kube-controller-manager, kubectl) from the same module, so their Go build
# cache is shared; a cache hit costs nothing. Runs at low priority on one core so that it does
# not starve other builds on a shared machine (FERROKV_GO_CPUS widens it).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mod="$root/tests/kube"
version="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 }' "$mod/go.mod")"
[ -n "$version" ] || { echo "build-kind-kube: no k8s.io/kubernetes version in $mod/go.mod" >&2; exit 1; }
major="${version#v}"; major="${major%%.*}"
minor="${version#v*.}"; minor="${minor%%.*}"
# kubeadm compares its own version with the kubelet's and the control plane's, so every binary
# carries the real version string, as in build-kube.sh.
ld=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
cpus="${FERROKV_GO_CPUS:-0}"
GO_TOOLS_LDFLAGS="$ld" exec nice -n 10 taskset -c "$cpus" "$root/scripts/go-tools.sh" "$mod" "kube-node-$version" \
  kubelet=k8s.io/kubernetes/cmd/kubelet \
  kubeadm=k8s.io/kubernetes/cmd/kubeadm \
  kube-proxy=k8s.io/kubernetes/cmd/kube-proxy \
  kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler
