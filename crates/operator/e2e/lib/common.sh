# Shared by the e2e scripts (sourced): the cache root, the Debian mirror and suite, a running
# docker engine, and a cached debootstrap root filesystem imported as a docker image.
E2E_CACHE="${FERROKV_CACHE:-$HOME/.cache/ferrokv}"
E2E_SUITE="${E2E_DEBIAN_SUITE:-bookworm}"
# The base of the member, operator, moto and kube-proxy images: python3 runs moto, iptables,
# nftables and conntrack are what kube-proxy calls.
E2E_BASE_PKGS="ca-certificates,python3,iptables,nftables,conntrack,procps"
# The kind node: the packages kind's own base image installs that Debian has, with Debian's
# containerd, runc and CNI plugins in place of kind's source builds.
E2E_NODE_PKGS="systemd,systemd-sysv,containerd,runc,containernetworking-plugins,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,e2fsprogs,bash,ca-certificates,curl,jq,procps,socat"

e2e_log() { echo "[e2e $(date -u +%H:%M:%S)] $*" >&2; }
e2e_die() { echo "e2e: FAILED: $*" >&2; exit 1; }

# The mirror apt already uses on this machine, so nothing here names a host of its own.
e2e_mirror() {
  if [ -n "${E2E_DEBIAN_MIRROR:-}" ]; then echo "$E2E_DEBIAN_MIRROR"; return; fi
  local m
  m="$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -1)"
  [ -n "$m" ] || m="$(awk '$1 == "deb" && $3 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)"
  [ -n "$m" ] || e2e_die "no Debian mirror in the apt sources (set E2E_DEBIAN_MIRROR)"
  echo "$m"
}

# Capabilities missing from this machine's bounding set (CapBnd): where there are any, every
# --privileged container fails in runc, so dockerd gets runc-drop-caps as its default runtime.
e2e_caps_missing() {
  local bnd last
  bnd=$((16#$(awk '/^CapBnd:/ {print $2}' /proc/self/status)))
  last="$(cat /proc/sys/kernel/cap_last_cap)"
  [ "$bnd" != $(((1 << (last + 1)) - 1)) ]
}

# Installs docker.io when missing and starts dockerd when nothing answers on its socket (no
# systemd on these machines: dockerd runs as a plain background process, logging to
# $E2E_CACHE/dockerd.log, its pid in $E2E_CACHE/dockerd.pid). A dockerd this started without
# the runtime it needs is restarted; one started by someone else is left alone and the run fails.
e2e_docker_up() {
  if ! command -v dockerd >/dev/null 2>&1; then
    e2e_log "installing docker.io"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io >&2 || e2e_die "apt-get install docker.io failed"
  fi
  local args=() need=0
  mkdir -p "$E2E_CACHE/bin"
  if e2e_caps_missing; then
    need=1
    install -m 0755 "$(dirname "${BASH_SOURCE[0]}")/../node/runc-drop-caps" "$E2E_CACHE/bin/runc-drop-caps"
    args=(--add-runtime "ferrokv-e2e=$E2E_CACHE/bin/runc-drop-caps" --default-runtime ferrokv-e2e)
  fi
  if docker info >/dev/null 2>&1; then
    if [ "$need" = 0 ] || [ "$(docker info --format '{{.DefaultRuntime}}')" = ferrokv-e2e ]; then return 0; fi
    local pid
    pid="$(cat "$E2E_CACHE/dockerd.pid" 2>/dev/null || true)"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null ||
      e2e_die "this machine lacks capabilities privileged containers ask for, and the running dockerd (not started by the e2e scripts) has no runtime that drops them: restart it with --add-runtime ferrokv-e2e=$E2E_CACHE/bin/runc-drop-caps --default-runtime ferrokv-e2e"
    e2e_log "restarting dockerd $pid with the runc-drop-caps runtime"
    kill "$pid"
    local i
    for i in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  fi
  e2e_log "starting dockerd ${args[*]}"
  setsid nohup dockerd "${args[@]}" >"$E2E_CACHE/dockerd.log" 2>&1 </dev/null &
  echo $! >"$E2E_CACHE/dockerd.pid"
  local i
  for i in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  e2e_die "dockerd did not come up (see $E2E_CACHE/dockerd.log)"
}

# e2e_rootfs NAME PACKAGES: a minbase debootstrap of $E2E_SUITE with PACKAGES (comma-separated),
# as a tarball cached under $E2E_CACHE/rootfs-NAME-<key>.tar; prints its path. The .debs are
# kept in one shared cache so a second root filesystem downloads only what is new.
e2e_rootfs() {
  local name="$1" pkgs="$2" key out tmp debs
  key="$(printf '%s %s %s' "$E2E_SUITE" "$pkgs" "${3:-}" | sha256sum | cut -c1-12)"
  out="$E2E_CACHE/rootfs-$name-$key.tar"
  if [ -s "$out" ]; then echo "$out"; return 0; fi
  command -v debootstrap >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2
  debs="$E2E_CACHE/debootstrap-debs"
  mkdir -p "$debs"
  tmp="$(mktemp -d "$E2E_CACHE/rootfs-$name.XXXXXX")"
  e2e_log "debootstrap $E2E_SUITE for $name (+ $pkgs)"
  if ! debootstrap --variant=minbase --include="$pkgs" --cache-dir="$debs" "$E2E_SUITE" "$tmp/root" "$(e2e_mirror)" >"$tmp.log" 2>&1; then
    tail -20 "$tmp.log" >&2
    rm -rf "$tmp" "$tmp.log"
    e2e_die "debootstrap for $name failed"
  fi
  # Apt lists, caches and docs are not needed in an image.
  rm -rf "$tmp/root/var/lib/apt/lists/"* "$tmp/root/var/cache/apt/"*.bin "$tmp/root/usr/share/doc" "$tmp/root/usr/share/man"
  tar -C "$tmp/root" --numeric-owner -cf "$out.tmp" .
  mv "$out.tmp" "$out"
  rm -rf "$tmp" "$tmp.log"
  echo "$out"
}

# e2e_base_image: the base rootfs imported into docker as ferrokv-e2e/base:<key>; prints it.
e2e_base_image() {
  local tar name
  tar="$(e2e_rootfs base "$E2E_BASE_PKGS")"
  name="ferrokv-e2e/base:$(basename "$tar" .tar | sed 's/^rootfs-base-//')"
  if ! docker image inspect "$name" >/dev/null 2>&1; then
    e2e_log "importing $name"
    docker import "$tar" "$name" >/dev/null
  fi
  echo "$name"
}
