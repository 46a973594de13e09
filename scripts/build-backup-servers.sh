#!/usr/bin/env bash
# Installs the object-storage servers the backup tests run against, each into a cache outside the
# checkout, and prints the directory of each one asked for (all when none is named), one a line:
#   scripts/build-backup-servers.sh [moto] [azurite] [fake-gcs]
#   moto      moto[server] (S3-compatible) from PyPI, in a venv: <dir>/bin/moto_server
#   azurite   Azurite (Azure Blob emulator) from npm: <dir>/node_modules/.bin/azurite-blob
#   fake-gcs  fake-gcs-server (GCS emulator) from the Go module proxy: <dir>/fake-gcs-server
# The cache key covers the pinned version, so a changed pin never reuses a stale install, and a
# hit costs nothing. Cold: moto ~1 min, azurite ~1 min, fake-gcs-server ~2 min.
# MinIO is not used: its releases are not semver tags, so the Go module proxy only offers it by
# pseudo-version, and it builds in many minutes; moto is the S3 server the issue names as fallback.
set -euo pipefail
MOTO_VERSION=5.2.5
AZURITE_VERSION=3.37.0
FAKE_GCS_VERSION=v1.56.1
cache="${FERROKV_CACHE:-$HOME/.cache/ferrokv}"
key() { printf '%s' "$*" | sha256sum | cut -c1-12; }

build() {
  local name="$1" out="$2" check="$3"
  shift 3
  if [ -x "$out/$check" ]; then
    echo "$out"
    return 0
  fi
  echo "build-backup-servers: installing $name into $out" >&2
  local tmp="$out.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  if ! "$@" "$tmp" >&2; then
    rm -rf "$tmp"
    echo "build-backup-servers: installing $name failed" >&2
    return 1
  fi
  [ -x "$tmp/$check" ] || { rm -rf "$tmp"; echo "build-backup-servers: $name has no $check" >&2; return 1; }
  rm -rf "$out"
  mv "$tmp" "$out"
  echo "$out"
}

install_moto() {
  local dir="$1"
  command -v python3 >/dev/null || { echo "python3 is not installed" >&2; return 1; }
  python3 -m venv "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION"
  # A venv's scripts name their interpreter by absolute path: the directory is renamed into
  # place after this, so point them at the final location.
  local final="${dir%.tmp.*}"
  sed -i "1s|^#!$dir/|#!$final/|" "$dir"/bin/* 2>/dev/null || true
  sed -i "s|$dir|$final|g" "$dir/bin/activate" "$dir/pyvenv.cfg" 2>/dev/null || true
}

install_azurite() {
  local dir="$1"
  command -v npm >/dev/null || { echo "npm is not installed" >&2; return 1; }
  (cd "$dir" && npm init -y >/dev/null && npm install --no-audit --no-fund --silent "azurite@$AZURITE_VERSION")
}

install_fake_gcs() {
  local dir="$1"
  command -v go >/dev/null || { echo "go is not installed" >&2; return 1; }
  CGO_ENABLED=0 GOTOOLCHAIN=local GOWORK=off GOFLAGS=-mod=mod GOBIN="$dir" \
    go install -trimpath -ldflags "-s -w" "github.com/fsouza/fake-gcs-server@$FAKE_GCS_VERSION"
}

wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(moto azurite fake-gcs)
for w in "${wanted[@]}"; do
  case "$w" in
    moto) build moto "$cache/moto-$(key "moto[server]==$MOTO_VERSION")" bin/moto_server install_moto ;;
    azurite) build azurite "$cache/azurite-$(key "azurite@$AZURITE_VERSION")" node_modules/.bin/azurite-blob install_azurite ;;
    fake-gcs) build fake-gcs-server "$cache/fake-gcs-server-$(key "$FAKE_GCS_VERSION")" fake-gcs-server install_fake_gcs ;;
    *) echo "build-backup-servers: unknown server $w (moto, azurite, fake-gcs)" >&2; exit 2 ;;
  esac
done
