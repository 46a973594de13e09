#!/usr/bin/env bash
# Builds etcd's `etcd-dump-logs` and `benchmark` tools from the root module go.etcd.io/etcd/v3 at
# the version tests/etcd-tools/go.mod pins (v3.6.8: the only 3.6 release the module proxy serves
# for the root module) into a cache outside the checkout and prints that directory.
# A cache hit costs nothing; a cold build takes a few minutes on 2 cores.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
exec "$root/scripts/go-tools.sh" "$root/tests/etcd-tools" etcd-tools \
  etcd-dump-logs=go.etcd.io/etcd/v3/tools/etcd-dump-logs \
  benchmark=go.etcd.io/etcd/v3/tools/benchmark
