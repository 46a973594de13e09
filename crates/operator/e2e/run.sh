#!/usr/bin/env bash
# kind end-to-end suite of the ferrokv operator.
#
# Creates a kind cluster, loads the member and operator images, installs the chart, applies
# the example EtcdCluster, waits for Available, scales 3 -> 5 -> 3, deletes a member pod and
# waits until it is replaced. Waits on conditions (kubectl wait), never on sleeps alone.
#
# Exits 0 with "skipped: ..." when docker/kind/kubectl/helm are not available.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
CLUSTER="${KIND_CLUSTER:-ferrokv-e2e}"
NS="${E2E_NAMESPACE:-default}"
MEMBER_IMAGE="${MEMBER_IMAGE:-ghcr.io/ferrokv/ferrokv:0.1.0}"
OPERATOR_IMAGE="${OPERATOR_IMAGE:-ghcr.io/ferrokv/ferrokv-operator:0.1.0}"
TIMEOUT="${E2E_TIMEOUT:-300s}"

for tool in docker kind kubectl helm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "skipped: docker/kind not available ($tool not found)"
    exit 0
  fi
done
if ! docker info >/dev/null 2>&1; then
  echo "skipped: docker/kind not available (docker daemon not reachable)"
  exit 0
fi

log() { echo "[e2e $(date -u +%H:%M:%S)] $*"; }

cleanup() {
  if [[ "${KEEP_CLUSTER:-0}" != "1" ]]; then
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

if ! kind get clusters | grep -qx "$CLUSTER"; then
  log "creating kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --wait 120s
fi

# Build what is missing from this checkout (the Dockerfile's two targets), then load both.
for pair in "ferrokv=$MEMBER_IMAGE" "operator=$OPERATOR_IMAGE"; do
  target="${pair%%=*}"
  img="${pair#*=}"
  if ! docker image inspect "$img" >/dev/null 2>&1; then
    log "building $img (target $target)"
    docker build -f "$ROOT/Dockerfile" --target "$target" -t "$img" "$ROOT"
  fi
  log "loading $img"
  kind load docker-image --name "$CLUSTER" "$img"
done

log "installing the chart"
helm upgrade --install ferrokv-operator "$ROOT/charts/ferrokv-operator" \
  --namespace ferrokv-system --create-namespace \
  --set image.pullPolicy=Never --wait --timeout "$TIMEOUT"

log "applying the example cluster"
sed "s/namespace: default/namespace: $NS/" "$ROOT/manifests/examples/etcdcluster.yaml" | kubectl apply -f -

wait_members() {
  local want="$1"
  log "waiting for $want members, Available and not Progressing"
  kubectl -n "$NS" wait etcdcluster/demo --for=jsonpath='{.status.replicas}'="$want" --timeout="$TIMEOUT"
  kubectl -n "$NS" wait etcdcluster/demo --for=jsonpath='{.status.readyMembers}'="$want" --timeout="$TIMEOUT"
  kubectl -n "$NS" wait etcdcluster/demo --for=condition=Available --timeout="$TIMEOUT"
  kubectl -n "$NS" wait etcdcluster/demo --for=condition=Progressing=false --timeout="$TIMEOUT"
}

wait_members 3
kubectl -n "$NS" get etcdcluster demo

log "scaling 3 -> 5"
kubectl -n "$NS" scale etcdcluster/demo --replicas=5
wait_members 5

log "scaling 5 -> 3"
kubectl -n "$NS" scale etcdcluster/demo --replicas=3
wait_members 3

victim="$(kubectl -n "$NS" get pods -l app.kubernetes.io/instance=demo -o jsonpath='{.items[0].metadata.name}')"
log "deleting member pod $victim"
kubectl -n "$NS" delete pod "$victim" --wait=true
# The pod comes back on its claim (same member) or, if its data is gone, a new member
# replaces it; either way the cluster returns to 3 ready members.
wait_members 3
kubectl -n "$NS" get etcdcluster demo -o wide
kubectl -n "$NS" get events --field-selector involvedObject.name=demo

log "passed"
