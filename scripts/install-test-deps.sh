#!/usr/bin/env bash
# Installs what the tests need besides cargo: Debian's reference etcd server and etcdctl, and
# iproute2 for the fault tests.
# Idempotent; uses sudo only when not root.
set -euo pipefail
need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
# The fault tests (tests/tests/faults.rs): network namespaces and veths (`ip`), the disk-full
# ballast (`fallocate`, util-linux, always there on Debian).
command -v ip >/dev/null 2>&1 || need+=(iproute2)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-test-deps: need root or sudo to install ${need[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
echo "install-test-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${need[@]}" >/dev/null
# Debian enables and starts the packaged etcd service where systemd runs; the tests start their
# own members on free ports, so a running system etcd does not interfere, but stop it to free
# 2379/2380 for `make run`.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  $SUDO systemctl stop etcd || true
fi
etcd --version | head -1
