#!/usr/bin/env bash
# Builds the e2e suite's container images without any image registry and prints their names:
#   ferrokv-e2e/base:<key>             Debian (debootstrap from the apt mirror) + ca-certificates,
#                                      python3, iptables/nftables, conntrack: `docker import`ed
#   ghcr.io/ferrokv/ferrokv:0.1.0      the member (also ferrokv:dev), and :0.1.1, the same
#                                      binary under the tag the upgrade scenario rolls to
#   ghcr.io/ferrokv/ferrokv-operator:0.1.0   the operator with ferrokv (also ferrokv-operator:dev)
#   ferrokv-e2e/moto:<version>         the S3-compatible server of the backup scenario
# The Dockerfile still builds the member and the operator the ordinary way where a registry is
# reachable; this script is what `make images` runs here. The root filesystem tarball is cached
# under ~/.cache/ferrokv (seconds when warm, about a minute cold); the binaries come from this
# checkout's cargo build (E2E_PROFILE=release for release builds; debug by default because it
# is incremental and the suite does not measure speed).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=../crates/operator/e2e/lib/common.sh
source "$root/crates/operator/e2e/lib/common.sh"
profile="${E2E_PROFILE:-debug}"

e2e_docker_up

# One import per root filesystem tarball: its key is in the tag, so a changed package list
# never reuses a stale base.
base="$(e2e_base_image)"

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx" "$ctx.moto" "$ctx.cargo.log"' EXIT
# E2E_BIN_DIR: use the ferrokv and ferrokv-operator binaries already there, without cargo (a
# shared machine's cargo locks can keep a no-op build waiting for minutes).
if [ -n "${E2E_BIN_DIR:-}" ]; then
  bin="$E2E_BIN_DIR"
  [ -x "$bin/ferrokv" ] && [ -x "$bin/ferrokv-operator" ] || e2e_die "no ferrokv and ferrokv-operator in E2E_BIN_DIR=$bin"
else
  flag=()
  [ "$profile" = release ] && flag=(--release)
  e2e_log "cargo build ${flag[*]} -p ferrokv -p ferrokv-operator"
  if ! (cd "$root" && cargo build "${flag[@]}" -p ferrokv -p ferrokv-operator) >"$ctx.cargo.log" 2>&1; then
    tail -30 "$ctx.cargo.log" >&2
    e2e_die "cargo build of ferrokv and ferrokv-operator failed"
  fi
  bin="$root/target/$profile"
fi

# image NAME DOCKERFILE-BODY FILE...: a throwaway context with just FILEs, no registry involved
# (the classic builder resolves FROM against local images first).
image() {
  local name="$1" body="$2" key
  shift 2
  # Rebuilt only when an input changed: the key (base, Dockerfile body, files' contents) is a
  # label of the image.
  key="$( { echo "$base $body"; find "$@" -type f -print0 | sort -z | xargs -0 sha256sum | cut -d' ' -f1; } | sha256sum | cut -c1-16)"
  if [ "$(docker image inspect -f '{{index .Config.Labels "io.ferrokv.e2e.inputs"}}' "$name" 2>/dev/null)" = "$key" ]; then
    echo "$name"
    return 0
  fi
  body="$body
LABEL io.ferrokv.e2e.inputs=\"$key\""
  rm -rf "${ctx:?}"/*
  [ $# -gt 0 ] && cp -a "$@" "$ctx/"
  printf 'FROM %s\n%s\n' "$base" "$body" >"$ctx/Dockerfile"
  e2e_log "building $name"
  # The classic builder's deprecation notice is noise here; its errors still show.
  DOCKER_BUILDKIT=0 docker build -q -t "$name" "$ctx" 2>&1 >/dev/null | grep -vE 'DEPRECATED|BuildKit is currently|environment-variable|^$' >&2 || true
  docker image inspect "$name" >/dev/null 2>&1 || e2e_die "building $name failed"
  echo "$name"
}

image ghcr.io/ferrokv/ferrokv:0.1.0 'COPY ferrokv /usr/local/bin/ferrokv
EXPOSE 2379 2380
ENTRYPOINT ["/usr/local/bin/ferrokv"]' "$bin/ferrokv"
docker tag ghcr.io/ferrokv/ferrokv:0.1.0 ferrokv:dev
# The upgrade scenario needs a second member image; a label makes it a distinct image id, so
# containerd really starts the pods anew from it.
image ghcr.io/ferrokv/ferrokv:0.1.1 'COPY ferrokv /usr/local/bin/ferrokv
LABEL io.ferrokv.e2e.upgrade="0.1.1"
EXPOSE 2379 2380
ENTRYPOINT ["/usr/local/bin/ferrokv"]' "$bin/ferrokv"

image ghcr.io/ferrokv/ferrokv-operator:0.1.0 'COPY ferrokv-operator ferrokv /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/ferrokv-operator"]' "$bin/ferrokv-operator" "$bin/ferrokv"
docker tag ghcr.io/ferrokv/ferrokv-operator:0.1.0 ferrokv-operator:dev

# moto: the venv scripts/build-backup-servers.sh installs, run by the image's own python3
# (the same 3.11 ABI) through its site-packages, so the venv's interpreter path does not matter.
moto_dir="$("$root/scripts/build-backup-servers.sh" moto)"
moto_version="$(sed -n 's/^MOTO_VERSION=//p' "$root/scripts/build-backup-servers.sh")"
site="$(cd "$moto_dir" && ls -d lib/python3*/site-packages | head -1)"
[ -n "$site" ] || e2e_die "no site-packages in $moto_dir"
mkdir -p "$ctx.moto"
cp -a "$moto_dir/$site" "$ctx.moto/site-packages"
image "ferrokv-e2e/moto:$moto_version" "COPY site-packages /opt/moto/site-packages
ENV PYTHONPATH=/opt/moto/site-packages
EXPOSE 5000
ENTRYPOINT [\"python3\", \"-m\", \"moto.server\", \"--host\", \"0.0.0.0\", \"--port\", \"5000\"]" "$ctx.moto/site-packages"
