#!/usr/bin/env bash
# kind end-to-end suite of the ferrokv operator (`make e2e`).
#
# Set-up (each step timed): the images without a registry (scripts/build-images.sh), the offline
# kind node image (scripts/build-kind-node.sh), kind, kubectl and helm from the Go module proxy,
# a ferrokv member in a container on kind's docker network as the cluster's external etcd (so
# the control plane the operator is tested in stores its state in ferrokv), `kind create
# cluster`, `kind load` of the images, `helm install` of the chart.
#
# Scenarios (each prints its duration; waits are on conditions, never on sleeps alone): the
# example EtcdCluster Available; scale 3 -> 5 -> 3; a member pod deleted and replaced; a PVC
# deleted (its member replaced by a new one); the operator restarted mid-scale; certificate
# renewal; a backup to moto running in the cluster and a restore from it into a new cluster;
# a member image upgrade rolled one member at a time with quorum kept.
#
# A prerequisite that cannot be had FAILS the run (exit 1) with the reason: it never skips.
# E2E_NODE_IMAGE=<image> and E2E_UPSTREAM_IMAGES=1 (build with the Dockerfile, kind's default
# node image, no external etcd) keep it working on machines with registries. KEEP_CLUSTER=1
# keeps the cluster after the run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
# shellcheck source=lib/common.sh
source "$ROOT/crates/operator/e2e/lib/common.sh"
CLUSTER="${KIND_CLUSTER:-ferrokv-e2e}"
NS="${E2E_NAMESPACE:-default}"
MEMBER_IMAGE="ghcr.io/ferrokv/ferrokv:0.1.0"
OPERATOR_IMAGE="ghcr.io/ferrokv/ferrokv-operator:0.1.0"
TIMEOUT="${E2E_TIMEOUT:-300s}"
ETCD_CONTAINER="$CLUSTER-etcd"
WORK="$(mktemp -d)"
SUITE_START=$SECONDS
declare -a RESULTS=()

log() { echo "[e2e $(date -u +%H:%M:%S)] $*"; }
fail() { echo "e2e: FAILED: $*" >&2; exit 1; }

# step NAME CMD...: a timed set-up step.
step() {
  local name="$1" t=$SECONDS
  shift
  log "set-up: $name"
  "$@" || fail "set-up step '$name' failed"
  RESULTS+=("setup    $(printf '%-34s' "$name") $((SECONDS - t))s")
  log "set-up: $name: $((SECONDS - t))s"
}

# scenario NAME FN: a timed scenario; the first failing one ends the run.
scenario() {
  local name="$1" t=$SECONDS
  shift
  log "scenario: $name"
  if ! "$@"; then
    RESULTS+=("scenario $(printf '%-34s' "$name") FAILED after $((SECONDS - t))s")
    fail "scenario '$name'"
  fi
  RESULTS+=("scenario $(printf '%-34s' "$name") $((SECONDS - t))s")
  log "scenario: $name: passed in $((SECONDS - t))s"
}

summary() {
  echo "---- e2e summary ($((SECONDS - SUITE_START))s in all) ----"
  local r
  for r in "${RESULTS[@]}"; do echo "$r"; done
}

cleanup() {
  local rc=$?
  summary || true
  if [ "$rc" != 0 ] && command -v kubectl >/dev/null 2>&1; then
    kubectl get etcdclusters,etcdbackups,pods,pvc -A -o wide 2>/dev/null | tail -40 || true
    kubectl -n ferrokv-system logs deploy/ferrokv-operator --tail=40 2>/dev/null || true
  fi
  if [[ "${KEEP_CLUSTER:-0}" != "1" ]]; then
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    docker rm -f "$ETCD_CONTAINER" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

# ---- prerequisites ----------------------------------------------------------------------------
tools() {
  e2e_docker_up
  local d
  d="$("$ROOT/scripts/build-kind.sh")" || return 1
  export PATH="$d:$PATH"
  d="$("$ROOT/scripts/build-kube.sh")" || return 1
  export PATH="$d:$PATH"
  d="$("$ROOT/scripts/build-helm.sh")" || return 1
  export PATH="$d:$PATH"
  local t
  for t in docker kind kubectl helm; do command -v "$t" >/dev/null || { echo "no $t" >&2; return 1; }; done
}
step "tools (docker, kind, kubectl, helm)" tools

images() {
  if [ "${E2E_UPSTREAM_IMAGES:-0}" = 1 ]; then
    docker build -f "$ROOT/Dockerfile" --target ferrokv -t "$MEMBER_IMAGE" "$ROOT" &&
      docker tag "$MEMBER_IMAGE" ghcr.io/ferrokv/ferrokv:0.1.1 &&
      docker build -f "$ROOT/Dockerfile" --target operator -t "$OPERATOR_IMAGE" "$ROOT"
    return
  fi
  "$ROOT/scripts/build-images.sh" >"$WORK/images"
}
step "images (member, operator, moto)" images
MOTO_IMAGE="$(grep '^ferrokv-e2e/moto:' "$WORK/images" 2>/dev/null || echo ferrokv-e2e/moto:none)"

node_image() {
  if [ -n "${E2E_NODE_IMAGE:-}" ]; then echo "$E2E_NODE_IMAGE" >"$WORK/node"; return; fi
  if [ "${E2E_UPSTREAM_IMAGES:-0}" = 1 ]; then : >"$WORK/node"; return; fi
  "$ROOT/scripts/build-kind-node.sh" >"$WORK/node"
}
step "kind node image" node_image
NODE_IMAGE="$(cat "$WORK/node")"

# The recording client (tests/examples/e2e_history.rs): E2E_BIN_DIR's when it has one, else
# this checkout's cargo build. It runs inside the kind node (docker exec), which reaches the
# Service and pod networks, so nothing is routed from this machine into the cluster.
history_bin() {
  if [ -n "${E2E_BIN_DIR:-}" ] && [ -x "$E2E_BIN_DIR/e2e_history" ]; then
    cp "$E2E_BIN_DIR/e2e_history" "$WORK/e2e_history"
    return
  fi
  (cd "$ROOT" && cargo build -q -p ferrokv-tests --example e2e_history) &&
    cp "$ROOT/target/debug/examples/e2e_history" "$WORK/e2e_history"
}
step "recording client (e2e_history)" history_bin

# ---- the cluster, on ferrokv ------------------------------------------------------------------
# kind reuses a docker network named "kind"; creating it first lets the external etcd member
# sit on it before the node exists.
external_etcd() {
  kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  docker rm -f "$ETCD_CONTAINER" >/dev/null 2>&1 || true
  docker network inspect kind >/dev/null 2>&1 || docker network create kind >/dev/null
  docker run -d --name "$ETCD_CONTAINER" --network kind --entrypoint /usr/local/bin/ferrokv \
    "$MEMBER_IMAGE" --name kube-etcd --data-dir /tmp/kube-etcd \
    --listen-client-urls http://0.0.0.0:2379 --advertise-client-urls "http://$ETCD_CONTAINER:2379" \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster kube-etcd=http://127.0.0.1:2380 >/dev/null
  ETCD_IP="$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$ETCD_CONTAINER")"
  [ -n "$ETCD_IP" ] || return 1
  local i
  for i in $(seq 1 60); do
    docker exec "$ETCD_CONTAINER" python3 -c "import urllib.request,sys; sys.exit(0 if b'true' in urllib.request.urlopen('http://127.0.0.1:2379/health').read() else 1)" 2>/dev/null && return 0
    sleep 1
  done
  docker logs --tail 20 "$ETCD_CONTAINER" >&2
  return 1
}

create_cluster() {
  local cfg="$WORK/kind.yaml" own=0
  case "$NODE_IMAGE" in ferrokv-e2e/kind-node:*) own=1 ;; esac
  {
    echo "kind: Cluster"
    echo "apiVersion: kind.x-k8s.io/v1alpha4"
    # The offline node image ships kube-proxy for nftables (no iptables-wrapper to pick a
    # backend) and a static CNI.
    [ "$own" = 1 ] && echo "networking: {kubeProxyMode: nftables}"
    echo "nodes:"
    echo "- role: control-plane"
    [ -n "$NODE_IMAGE" ] && echo "  image: $NODE_IMAGE"
    echo "kubeadmConfigPatches:"
    echo "- |"
    echo "  kind: ClusterConfiguration"
    if [ -n "${ETCD_IP:-}" ]; then
      echo "  etcd:"
      echo "    external:"
      echo "      endpoints: [\"http://$ETCD_IP:2379\"]"
    fi
    if [ "$own" = 1 ]; then
      # The hostPath provisioner creates volume directories from inside kube-controller-manager:
      # they must land on the node (see node/ferrokv-hostpath-perms.service).
      echo "  controllerManager:"
      echo "    extraVolumes:"
      echo "    - {name: hostpath-pv, hostPath: /tmp/hostpath_pv, mountPath: /tmp/hostpath_pv, pathType: DirectoryOrCreate}"
    fi
  } >"$cfg"
  local retain=()
  [ "${KEEP_CLUSTER:-0}" = 1 ] && retain=(--retain)
  kind create cluster --name "$CLUSTER" --config "$cfg" --wait 180s "${retain[@]}"
}

if [ "${E2E_UPSTREAM_IMAGES:-0}" != 1 ]; then
  step "ferrokv as the cluster's etcd" external_etcd
fi
step "kind create cluster" create_cluster

load() {
  local img
  for img in "$MEMBER_IMAGE" ghcr.io/ferrokv/ferrokv:0.1.1 "$OPERATOR_IMAGE" "$MOTO_IMAGE"; do
    docker image inspect "$img" >/dev/null 2>&1 || continue
    kind load docker-image --name "$CLUSTER" "$img" >/dev/null || return 1
  done
}
step "kind load (4 images)" load

helm_install() {
  helm upgrade --install ferrokv-operator "$ROOT/charts/ferrokv-operator" \
    --namespace ferrokv-system --create-namespace \
    --set image.pullPolicy=Never --wait --timeout "$TIMEOUT"
}
step "helm install" helm_install

# ---- helpers ----------------------------------------------------------------------------------
k() { kubectl -n "$NS" "$@"; }

# wait_members [CLUSTER] N: N current and ready members, Available, not Progressing.
wait_members() {
  local c=demo
  if [ $# -gt 1 ]; then c="$1"; shift; fi
  local want="$1"
  k wait "etcdcluster/$c" --for=jsonpath='{.status.replicas}'="$want" --timeout="$TIMEOUT" >/dev/null &&
    k wait "etcdcluster/$c" --for=jsonpath='{.status.readyMembers}'="$want" --timeout="$TIMEOUT" >/dev/null &&
    k wait "etcdcluster/$c" --for=condition=Available --timeout="$TIMEOUT" >/dev/null &&
    k wait "etcdcluster/$c" --for=condition=Progressing=false --timeout="$TIMEOUT" >/dev/null
}

members() { k get pods -l "app.kubernetes.io/instance=${1:-demo}" -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' | sort; }

# client_pod CLUSTER: a pod (the member image: python3) with the client certificate the
# operator issued for CLUSTER, to reach it through its client Service.
client_pod() {
  local c="$1"
  k get pod "client-$c" >/dev/null 2>&1 && return 0
  kubectl apply -f - >/dev/null <<EOF || return 1
apiVersion: v1
kind: Pod
metadata: {name: client-$c, namespace: $NS}
spec:
  containers:
  - name: client
    image: $MEMBER_IMAGE
    imagePullPolicy: Never
    command: [sleep, infinity]
    volumeMounts: [{name: tls, mountPath: /etc/ferrokv/client-tls, readOnly: true}]
  volumes:
  - {name: tls, secret: {secretName: $c-client-tls}}
EOF
  k wait "pod/client-$c" --for=condition=Ready --timeout="$TIMEOUT" >/dev/null
}

# kv put|get KEY [VALUE] [CLUSTER]: one request through etcd's JSON gateway on the client port.
kv() {
  local op="$1" key="$2" val="${3:-}" c="${4:-demo}"
  client_pod "$c" || return 1
  k exec -i "client-$c" -- python3 - "$op" "$key" "$val" "https://$c-client.$NS.svc:2379" <<'EOF'
import base64, json, ssl, sys, urllib.request
op, key, val, base = sys.argv[1:5]
ctx = ssl.create_default_context(cafile="/etc/ferrokv/client-tls/ca.crt")
ctx.load_cert_chain("/etc/ferrokv/client-tls/tls.crt", "/etc/ferrokv/client-tls/tls.key")
b = lambda s: base64.b64encode(s.encode()).decode()
body = {"key": b(key), "value": b(val)} if op == "put" else {"key": b(key)}
path = "/v3/kv/put" if op == "put" else "/v3/kv/range"
req = urllib.request.Request(base + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
out = json.load(urllib.request.urlopen(req, context=ctx, timeout=10))
if op == "get":
    kvs = out.get("kvs", [])
    print(base64.b64decode(kvs[0]["value"]).decode() if kvs else "")
EOF
}

# ---- scenarios --------------------------------------------------------------------------------
available() {
  # The example as shipped, but for its CPU request: five members at 250m do not fit beside the
  # control plane on one 2-core kind node.
  sed -e "s/namespace: default/namespace: $NS/" -e "s/cpu: 250m/cpu: 50m/" "$ROOT/manifests/examples/etcdcluster.yaml" |
    kubectl apply -f - >/dev/null &&
    wait_members 3 &&
    k get etcdcluster demo
}
scenario "example cluster Available (3)" available

# The recording client writes from here to the end of the upgrade through the client Service,
# with the client certificate the operator issued; its history is checked in the last scenario.
NODE="$CLUSTER-control-plane"
HIST=/var/lib/ferrokv-e2e-history
history_start() {
  local svc f
  svc="$(k get svc demo-client -o jsonpath='{.spec.clusterIP}')" && [ -n "$svc" ] || return 1
  mkdir -p "$WORK/tls" || return 1
  k get secret demo-client-tls -o jsonpath='{.data.ca\.crt}' | base64 -d >"$WORK/tls/ca.crt" &&
    k get secret demo-client-tls -o jsonpath='{.data.tls\.crt}' | base64 -d >"$WORK/tls/tls.crt" &&
    k get secret demo-client-tls -o jsonpath='{.data.tls\.key}' | base64 -d >"$WORK/tls/tls.key" || return 1
  # Through docker exec's stdin, not docker cp, and not under the node's /tmp: a tmpfs that
  # docker cp does not see and that is mounted noexec.
  docker exec "$NODE" mkdir -p "$HIST" || return 1
  for f in e2e_history tls/ca.crt tls/tls.crt tls/tls.key; do
    docker exec -i "$NODE" sh -c "cat >$HIST/${f#tls/}" <"$WORK/$f" || return 1
  done
  docker exec "$NODE" chmod +x "$HIST/e2e_history" || return 1
  docker exec -d "$NODE" sh -c "cd $HIST && ./e2e_history --endpoint https://$svc:2379 --ca ca.crt --cert tls.crt --key tls.key --domain demo-client.$NS.svc --stop-file stop >out 2>err; echo \$? >rc"
  local i
  for i in $(seq 1 30); do
    if docker exec "$NODE" grep -q 'recording from revision' "$HIST/err" 2>/dev/null; then
      log "recording client: $(docker exec "$NODE" cat "$HIST/err")"
      return 0
    fi
    sleep 1
  done
  docker exec "$NODE" cat "$HIST/err" "$HIST/out" >&2
  return 1
}
step "recording client started" history_start

scale() {
  k scale etcdcluster/demo --replicas=5 >/dev/null && wait_members 5 &&
    k scale etcdcluster/demo --replicas=3 >/dev/null && wait_members 3
}
scenario "scale 3 -> 5 -> 3" scale

# until SECONDS CMD...: CMD succeeds within SECONDS (polled every second).
until_ok() {
  local n="$1" i
  shift
  for ((i = 0; i < n; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 1
  done
  return 1
}
uid_of() { k get "$1" -o jsonpath='{.metadata.uid}' 2>/dev/null; }
uid_changed() { local u; u="$(uid_of "$1")"; [ -n "$u" ] && [ "$u" != "$2" ]; }
not_member() { ! members | grep -qx "$1"; }

pod_deleted() {
  local victim uid
  victim="$(members | head -1)"
  uid="$(uid_of "pod/$victim")"
  log "deleting member pod $victim"
  k delete pod "$victim" --wait=true >/dev/null || return 1
  # It comes back on its claim: the same member, a new pod.
  until_ok 300 uid_changed "pod/$victim" "$uid" || { echo "$victim not recreated" >&2; return 1; }
  k wait "pod/$victim" --for=condition=Ready --timeout="$TIMEOUT" >/dev/null && wait_members 3
}
scenario "member pod deleted and replaced" pod_deleted

pvc_deleted() {
  local victim uid
  victim="$(members | tail -1)"
  uid="$(uid_of "pvc/$victim")"
  log "deleting the PVC and pod of $victim"
  k delete pvc "$victim" --wait=false >/dev/null &&
    k delete pod "$victim" --wait=true >/dev/null || return 1
  # Its data is gone: a new member replaces it (member names are never reused), or the member
  # comes back on a new, empty claim; either way the cluster returns to 3 ready members.
  until_ok 300 bash -c "$(declare -f k members not_member uid_of uid_changed); NS=$NS; not_member $victim || uid_changed pvc/$victim $uid" ||
    { echo "$victim neither replaced nor given a new claim" >&2; return 1; }
  wait_members 3
  log "members now: $(members | tr '\n' ' ')"
}
scenario "PVC deleted, member replaced" pvc_deleted

operator_restart() {
  k scale etcdcluster/demo --replicas=5 >/dev/null || return 1
  # Restart once the scale-up is under way (a fourth member exists), not before.
  local i
  for i in $(seq 1 120); do
    [ "$(members | wc -l)" -ge 4 ] && break
    sleep 1
  done
  log "restarting the operator mid-scale ($(members | wc -l) member pods)"
  kubectl -n ferrokv-system delete pod -l app.kubernetes.io/name=ferrokv-operator --wait=false >/dev/null &&
    kubectl -n ferrokv-system rollout status deploy/ferrokv-operator --timeout="$TIMEOUT" >/dev/null &&
    wait_members 5 &&
    k scale etcdcluster/demo --replicas=3 >/dev/null && wait_members 3
}
scenario "operator restarted mid-scale" operator_restart

cert_renewal() {
  # A certificate Secret deleted by hand is reissued, and members roll to it one at a time.
  local before after
  before="$(k get secret demo-server-tls -o jsonpath='{.data.tls\.crt}')"
  [ -n "$before" ] || { echo "no demo-server-tls" >&2; return 1; }
  k delete secret demo-server-tls >/dev/null || return 1
  local i
  for i in $(seq 1 120); do
    after="$(k get secret demo-server-tls -o jsonpath='{.data.tls\.crt}' 2>/dev/null || true)"
    [ -n "$after" ] && [ "$after" != "$before" ] && break
    sleep 1
  done
  [ -n "$after" ] && [ "$after" != "$before" ] || { echo "server certificate not reissued" >&2; return 1; }
  wait_members 3 || return 1
  # Every member serves the new certificate (members reload it from the Secret's volume at the
  # next handshake, without a restart): the serial and notAfter of what each one presents.
  client_pod demo || return 1
  local pod ip served
  while read -r pod ip; do
    served=""
    for i in $(seq 1 180); do
      served="$(served_cert "$ip" "$after" "$before")" && break
      sleep 1
    done
    [[ "$served" == *" new "* ]] || { echo "$pod does not serve the new certificate: $served" >&2; return 1; }
    log "$pod serves $served"
  done < <(k get pods -l app.kubernetes.io/instance=demo -o jsonpath='{range .items[*]}{.metadata.name} {.status.podIP}{"\n"}{end}')
}

# served_cert IP NEW_PEM_B64 OLD_PEM_B64: the serial and notAfter of the certificate the member
# at IP presents on its client port (a TLS handshake with the client certificate), and whether
# it is NEW's ("new") or OLD's ("old"); fails unless it is NEW's.
served_cert() {
  k exec -i client-demo -- python3 - "$1" "$2" "$3" "demo-client.$NS.svc" <<'PY'
import base64, socket, ssl, sys, tempfile
ip, new, old, name = sys.argv[1:5]
def decoded(b64):
    pem = base64.b64decode(b64).decode()
    end = pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
    with tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False) as f:
        f.write(pem[:end] + "\n")
    return ssl._ssl._test_decode_cert(f.name)
want, was = decoded(new), decoded(old)
ctx = ssl.create_default_context(cafile="/etc/ferrokv/client-tls/ca.crt")
ctx.load_cert_chain("/etc/ferrokv/client-tls/tls.crt", "/etc/ferrokv/client-tls/tls.key")
with socket.create_connection((ip, 2379), timeout=5) as s:
    with ctx.wrap_socket(s, server_hostname=name) as t:
        got = t.getpeercert()
serial = got["serialNumber"]
which = "new" if serial == want["serialNumber"] else "old" if serial == was["serialNumber"] else "other"
print("serial %s notAfter %s %s (the old one: serial %s notAfter %s)" % (serial, got["notAfter"], which, was["serialNumber"], was["notAfter"]))
sys.exit(0 if which == "new" else 1)
PY
}
scenario "certificate renewal" cert_renewal

backup_restore() {
  kubectl apply -f - >/dev/null <<EOF || return 1
apiVersion: v1
kind: Pod
metadata: {name: moto, namespace: $NS, labels: {app: moto}}
spec:
  # No MOTO_PORT=tcp://... from the Service's docker-style links: moto reads MOTO_PORT.
  enableServiceLinks: false
  containers:
  - name: moto
    image: $MOTO_IMAGE
    imagePullPolicy: Never
    ports: [{containerPort: 5000}]
    readinessProbe: {tcpSocket: {port: 5000}, periodSeconds: 1}
    # Path-style only: otherwise moto takes the first label of a dotted Host for a bucket.
    env: [{name: S3_IGNORE_SUBDOMAIN_BUCKETNAME, value: "true"}]
---
apiVersion: v1
kind: Service
metadata: {name: moto, namespace: $NS}
spec:
  selector: {app: moto}
  ports: [{port: 5000, targetPort: 5000}]
---
apiVersion: v1
kind: Secret
metadata: {name: backup-credentials, namespace: $NS}
stringData: {AWS_ACCESS_KEY_ID: e2e, AWS_SECRET_ACCESS_KEY: e2e-secret}
EOF
  k wait pod/moto --for=condition=Ready --timeout="$TIMEOUT" >/dev/null || return 1
  local i
  for i in $(seq 1 30); do
    k exec moto -- python3 -c "import urllib.request; urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:5000/etcd-backups', method='PUT'))" 2>/dev/null && break
    sleep 1
  done
  kv put e2e/backup "before-backup" || return 1
  kubectl apply -f - >/dev/null <<EOF || return 1
apiVersion: ferrokv.io/v1alpha1
kind: EtcdBackup
metadata: {name: e2e, namespace: $NS}
spec:
  clusterName: demo
  store:
    destination: s3://etcd-backups/e2e
    endpoint: http://moto.$NS.svc:5000
    pathStyle: true
    credentialsSecret: backup-credentials
EOF
  local phase=""
  for i in $(seq 1 300); do
    phase="$(k get etcdbackup e2e -o jsonpath='{.status.phase}')"
    [ "$phase" = Succeeded ] || [ "$phase" = Failed ] && break
    sleep 1
  done
  [ "$phase" = Succeeded ] || { k get etcdbackup e2e -o jsonpath='{.status.message}' >&2; return 1; }
  local uri
  uri="$(k get etcdbackup e2e -o jsonpath='{.status.backup.uri}')"
  log "backup at $uri; restoring into demo-restored"
  kubectl apply -f - >/dev/null <<EOF || return 1
apiVersion: ferrokv.io/v1alpha1
kind: EtcdCluster
metadata: {name: demo-restored, namespace: $NS}
spec:
  replicas: 1
  version: "0.1.0"
  storage: {size: 1Gi}
  restore:
    destination: s3://etcd-backups/e2e
    endpoint: http://moto.$NS.svc:5000
    pathStyle: true
    credentialsSecret: backup-credentials
    source: {uri: "$uri"}
EOF
  wait_members demo-restored 1 || return 1
  local got
  got="$(kv get e2e/backup "" demo-restored)"
  [ "$got" = "before-backup" ] || { echo "restored value: '$got'" >&2; return 1; }
  k delete etcdcluster demo-restored --wait=true >/dev/null
}
scenario "backup to moto, restore" backup_restore

upgrade() {
  # One member at a time: at every poll at least a quorum (2 of 3) of pods is Ready.
  local leader
  leader="$(k get etcdcluster demo -o jsonpath='{.status.leader}')"
  k patch etcdcluster demo --type merge -p '{"spec":{"version":"0.1.1"}}' >/dev/null || return 1
  local i ready on_new
  for i in $(seq 1 600); do
    ready="$(k get pods -l app.kubernetes.io/instance=demo -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True || true)"
    [ "$ready" -ge 2 ] || { echo "quorum lost during the upgrade: $ready ready" >&2; return 1; }
    on_new="$(k get pods -l app.kubernetes.io/instance=demo -o jsonpath='{range .items[*]}{.spec.containers[0].image}{"\n"}{end}' | grep -c ':0.1.1$' || true)"
    if [ "$on_new" = 3 ] && [ "$ready" = 3 ]; then break; fi
    sleep 1
  done
  [ "$on_new" = 3 ] || { echo "only $on_new members on 0.1.1" >&2; return 1; }
  wait_members 3 && [ "$(kv get e2e/backup)" = "before-backup" ] || return 1
  # Followers first, the leader of when it started last, after leadership moved off it.
  local order
  order="$(k get events --field-selector involvedObject.name=demo,reason=MemberRestarted --sort-by=.metadata.creationTimestamp -o jsonpath='{range .items[*]}{.message}{"\n"}{end}' | awk '{print $3}' | tr '\n' ' ')"
  log "restarted in order: $order(leader was $leader)"
  [ "$(echo "$order" | wc -w)" = 3 ] || { echo "not 3 MemberRestarted Events: $order" >&2; return 1; }
  [ "$(echo "$order" | awk '{print $NF}')" = "$leader" ] || { echo "the leader $leader was not restarted last" >&2; return 1; }
  k get events --field-selector involvedObject.name=demo,reason=LeaderMoved -o name | grep -q . ||
    { echo "no LeaderMoved Event" >&2; return 1; }
}
scenario "member image upgrade, quorum kept" upgrade

history_check() {
  docker exec "$NODE" touch "$HIST/stop" || return 1
  local i
  for i in $(seq 1 240); do
    docker exec "$NODE" test -s "$HIST/rc" && break
    sleep 1
  done
  docker exec "$NODE" cat "$HIST/out"
  [ "$(docker exec "$NODE" cat "$HIST/rc" 2>/dev/null)" = 0 ] || { docker exec "$NODE" tail -20 "$HIST/err" >&2; return 1; }
}
scenario "client history linearizable" history_check

log "passed"
kubectl get etcdclusters,pods -A
