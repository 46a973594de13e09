#!/usr/bin/env bash
# Builds the reference etcd, etcdctl and etcdutl at the version tests/etcd36/go.mod pins (3.6.x,
# from the Go module proxy) into a cache outside the checkout and prints that directory.
# A cache hit costs nothing; a cold build takes a few minutes on 2 cores.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
exec "$root/scripts/go-tools.sh" "$root/tests/etcd36" etcd36 \
  etcd=go.etcd.io/etcd/server/v3 \
  etcdctl=go.etcd.io/etcd/etcdctl/v3 \
  etcdutl=go.etcd.io/etcd/etcdutl/v3
