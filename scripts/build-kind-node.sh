#!/usr/bin/env bash
# Assembles a kind node image offline and prints its name (ferrokv-e2e/kind-node:<k8s>-<key>).
#
# The layout is kind's own (sigs.k8s.io/kind's images/base: systemd as PID 1 through kind's
# entrypoint, containerd with the CRI plugin, kubelet under kubelet.slice with kubeadm's
# drop-ins, /kind/version, /kind/manifests/default-{cni,storage}.yaml), with its files taken from
# the kind module the Go module proxy serves. What kind builds from source comes from Debian
# (containerd 1.6, runc, the CNI plugins, systemd) via debootstrap, and the Kubernetes binaries
# and CoreDNS from the Go module proxy. The control-plane, kube-proxy, pause and CoreDNS images
# are built here under the names kubeadm v1.34 asks for and imported into containerd at the
# node's first boot (ferrokv-preload-images.service, before the kubelet), so nothing is pulled.
#
# Networking inside the node: the CNI is a static ptp + host-local config (kindnetd is not
# served by the module proxy; a single node needs no routes between nodes); storage is the
# in-tree hostPath provisioner kind already enables in kube-controller-manager.
#
# Cached as ~/.cache/ferrokv/kind-node-<key>/rootfs.tar (the key covers every input), imported
# into docker when the engine lacks the image: seconds when warm.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=../crates/operator/e2e/lib/common.sh
source "$root/crates/operator/e2e/lib/common.sh"
e2e_docker_up

node_dir="$root/crates/operator/e2e/node"
kmod="$root/tests/kube"
k8s="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 }' "$kmod/go.mod")"
coredns_version="$(awk '$1 == "require" && $2 == "github.com/coredns/coredns" { print $3 }' "$root/crates/operator/e2e/go/coredns/go.mod")"
# What kubeadm v1.34 deploys (cmd/kubeadm/app/constants): the sandbox image and CoreDNS's tag.
pause_version=3.10.1

kube_cp="$("$root/scripts/build-kube.sh")"
kube_node="$("$root/scripts/build-kind-kube.sh")"
coredns="$(nice -n 10 taskset -c "${FERROKV_GO_CPUS:-0}" "$root/scripts/go-tools.sh" "$root/crates/operator/e2e/go/coredns" "coredns-$coredns_version" coredns=github.com/coredns/coredns)"
kind_src="$(cd "$root/crates/operator/e2e/go/kind" && GOTOOLCHAIN=local GOWORK=off GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' sigs.k8s.io/kind)"
[ -d "$kind_src/images/base/files" ] || e2e_die "no images/base/files in the kind module at $kind_src"
node_tar="$(e2e_rootfs node "$E2E_NODE_PKGS")"
base="$(e2e_base_image)"

key="$( {
  echo "$k8s $coredns_version $pause_version $node_tar $base $kind_src"
  cat "$0" "$node_dir"/*
  for b in kube-apiserver kube-controller-manager kubectl; do sha256sum <"$kube_cp/$b"; done
  for b in kubelet kubeadm kube-proxy kube-scheduler; do sha256sum <"$kube_node/$b"; done
  sha256sum <"$coredns/coredns"
} | sha256sum | cut -c1-12)"
name="ferrokv-e2e/kind-node:$k8s-$key"
out="$E2E_CACHE/kind-node-$key"
# import_node TAR: the node image with the config of kind's (docker import takes no STOPSIGNAL,
# so a metadata-only build adds it: systemd shuts down on SIGRTMIN+3).
import_node() {
  local ctx
  docker import --change 'ENV container=docker' \
    --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' "$1" "$name-import" >/dev/null
  ctx="$(mktemp -d)"
  printf 'FROM %s\nSTOPSIGNAL SIGRTMIN+3\n' "$name-import" >"$ctx/Dockerfile"
  DOCKER_BUILDKIT=0 docker build -q -t "$name" "$ctx" 2>&1 >/dev/null | grep -vE 'DEPRECATED|BuildKit is currently|environment-variable|^$' >&2 || true
  rm -rf "$ctx"
  docker rmi "$name-import" >/dev/null 2>&1 || true
  docker image inspect "$name" >/dev/null 2>&1 || e2e_die "importing the node image failed"
}
if docker image inspect "$name" >/dev/null 2>&1; then echo "$name"; exit 0; fi
if [ -s "$out/rootfs.tar" ]; then
  e2e_log "importing cached $name"
  import_node "$out/rootfs.tar"
  echo "$name"
  exit 0
fi

e2e_log "assembling $name (cold)"
work="$(mktemp -d "$E2E_CACHE/kind-node-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# --- the images containerd gets at first boot ---------------------------------------------
# single IMAGE ENTRYPOINT FILE...: a FROM-scratch image of static binaries on PATH.
single() {
  local img="$1" entry="$2" d="$work/img"
  shift 2
  rm -rf "$d"
  mkdir -p "$d/usr/local/bin" "$d/tmp" "$d/etc"
  cp "$@" "$d/usr/local/bin/"
  # Static Go binaries still look these up (user names, hosts).
  echo 'root:x:0:0:root:/:/sbin/nologin' >"$d/etc/passwd"
  echo 'nobody:x:65534:65534:nobody:/:/sbin/nologin' >>"$d/etc/passwd"
  echo 'hosts: files dns' >"$d/etc/nsswitch.conf"
  tar -C "$d" --numeric-owner -cf "$work/img.tar" .
  docker import --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' --change "ENTRYPOINT $entry" "$work/img.tar" "$img" >/dev/null
  rm -rf "$d" "$work/img.tar"
  images+=("$img")
}
images=()
single "registry.k8s.io/kube-apiserver:$k8s" '["/usr/local/bin/kube-apiserver"]' "$kube_cp/kube-apiserver"
single "registry.k8s.io/kube-controller-manager:$k8s" '["/usr/local/bin/kube-controller-manager"]' "$kube_cp/kube-controller-manager"
single "registry.k8s.io/kube-scheduler:$k8s" '["/usr/local/bin/kube-scheduler"]' "$kube_node/kube-scheduler"
gcc -static -O2 -o "$work/pause" "$node_dir/pause.c"
single "registry.k8s.io/pause:$pause_version" '["/usr/local/bin/pause"]' "$work/pause"
# kubeadm's CoreDNS Deployment runs /coredns.
mkdir -p "$work/cd"
cp "$coredns/coredns" "$work/cd/coredns"
tar -C "$work/cd" -cf "$work/cd.tar" .
docker import --change 'ENTRYPOINT ["/coredns"]' "$work/cd.tar" "registry.k8s.io/coredns/coredns:$coredns_version" >/dev/null
images+=("registry.k8s.io/coredns/coredns:$coredns_version")
# kube-proxy calls nft/iptables and conntrack, so it sits on the Debian base.
mkdir -p "$work/kp"
cp "$kube_node/kube-proxy" "$work/kp/"
printf 'FROM %s\nCOPY kube-proxy /usr/local/bin/kube-proxy\n' "$base" >"$work/kp/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t "registry.k8s.io/kube-proxy:$k8s" "$work/kp" 2>&1 >/dev/null | grep -vE 'DEPRECATED|BuildKit is currently|environment-variable|^$' >&2 || true
docker image inspect "registry.k8s.io/kube-proxy:$k8s" >/dev/null 2>&1 || e2e_die "building the kube-proxy image failed"
images+=("registry.k8s.io/kube-proxy:$k8s")

# --- the node's root filesystem --------------------------------------------------------------
r="$work/root"
mkdir -p "$r"
tar -C "$r" --numeric-owner -xf "$node_tar"
mkdir -p "$r/kind/images"
docker save -o "$r/kind/images/images.tar" "${images[@]}"

# kind's files, with the modes its Dockerfile gives them (the module cache is read-only).
cp -r "$kind_src/images/base/files/." "$r/"
find "$r/kind" "$r/etc/systemd/system" "$r/etc/containerd" "$r/etc/sysctl.d" "$r/etc/default" "$r/LICENSES" \
  -type f -exec chmod 0644 {} + 2>/dev/null || true
chmod 0644 "$r/etc/crictl.yaml"
chmod 0755 "$r/kind" "$r/kind/bin" "$r"/kind/bin/* "$r/usr/local/bin/entrypoint" "$r/usr/local/bin/clean-install"
# The fuse-overlayfs snapshotter is for rootless hosts and is not built here.
rm -f "$r/etc/systemd/system/containerd-fuse-overlayfs.service"
# Debian installs containerd in /usr/bin.
sed -i 's|^ExecStart=/usr/local/bin/containerd|ExecStart=/usr/bin/containerd|' "$r/etc/systemd/system/containerd.service"
cp "$node_dir/containerd-config.toml" "$r/etc/containerd/config.toml"
install -m 0755 "$node_dir/runc-drop-caps" "$r/usr/local/bin/runc-drop-caps"
sed -i "s|@PAUSE@|registry.k8s.io/pause:$pause_version|" "$r/etc/containerd/config.toml"
mkdir -p "$r/opt/cni/bin" "$r/etc/cni/net.d"
for p in "$r"/usr/lib/cni/*; do ln -sf "/usr/lib/cni/$(basename "$p")" "$r/opt/cni/bin/"; done
cp "$node_dir/10-ferrokv-ptp.conflist" "$r/etc/cni/net.d/"
cp "$node_dir/ferrokv-preload-images.service" "$node_dir/ferrokv-hostpath-perms.service" "$r/etc/systemd/system/"
mkdir -p "$r/etc/systemd/system/kubelet.service.d"
cp "$node_dir/20-ferrokv-preload.conf" "$r/etc/systemd/system/kubelet.service.d/"
mkdir -p "$r/kind/manifests"
cp "$node_dir/default-cni.yaml" "$node_dir/default-storage.yaml" "$r/kind/manifests/"
echo "$k8s" >"$r/kind/version"
for b in kubelet kubeadm; do install -m 0755 "$kube_node/$b" "$r/usr/bin/$b"; done
install -m 0755 "$kube_cp/kubectl" "$r/usr/bin/kubectl"

# The steps of kind's base Dockerfile: no unit runs but those kind wants, journald does not
# read kmsg, systemd is init, and the kubelet, containerd and the preload are enabled.
find "$r/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
rm -f "$r"/lib/systemd/system/multi-user.target.wants/* "$r"/etc/systemd/system/*.wants/* \
  "$r"/lib/systemd/system/local-fs.target.wants/* "$r"/lib/systemd/system/sockets.target.wants/*udev* \
  "$r"/lib/systemd/system/sockets.target.wants/*initctl* "$r"/lib/systemd/system/basic.target.wants/*
echo "ReadKMsg=no" >>"$r/etc/systemd/journald.conf"
ln -sf /usr/lib/systemd/systemd "$r/sbin/init"
chroot "$r" systemctl enable kubelet.service containerd.service undo-mount-hacks.service ferrokv-preload-images.service ferrokv-hostpath-perms.service >/dev/null 2>&1
chroot "$r" systemctl mask systemd-binfmt.service >/dev/null 2>&1
mkdir -p "$r/etc/kubernetes/manifests"
rm -rf "$r/usr/share/doc" "$r/usr/share/man" "$r/var/cache/apt/archives/"*.deb

mkdir -p "$out.tmp"
tar -C "$r" --numeric-owner -cf "$out.tmp/rootfs.tar" .
rm -rf "$out"
mv "$out.tmp" "$out"
import_node "$out/rootfs.tar"
# Older node images and their caches are not needed any more (each is about a gigabyte).
for old in "$E2E_CACHE"/kind-node-*; do
  [ "$old" = "$out" ] || [ ! -d "$old" ] || rm -rf "$old"
done
docker images --format '{{.Repository}}:{{.Tag}}' ferrokv-e2e/kind-node | grep -vx "$name" | xargs -r docker rmi >/dev/null 2>&1 || true
e2e_log "built $name"
echo "$name"
