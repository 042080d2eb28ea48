#!/usr/bin/env bash
# Lints the Helm chart and renders it for the main value combinations (CI runs this; the Rust
# manifest tests in e2e/tests/chart.rs then assert on what it renders). Needs helm: run
# scripts/install-helm.sh first. Usage: scripts/test-chart.sh [output-dir]
set -euo pipefail
cd "$(dirname "$0")/.."

export PATH="${WEIR_TOOLS_DIR:-$HOME/.cache/weir-tools}/bin:$PATH"
if ! command -v helm >/dev/null 2>&1; then
  echo "test-chart: helm not found; run scripts/install-helm.sh" >&2
  exit 1
fi

out="${1:-$(mktemp -d)}"
mkdir -p "$out"
chart=charts/weir
# helm logs every followed symlink (files/streamjob.yaml -> crds/) at INFO; keep real warnings.
quiet() { grep -v 'found symbolic link in path' || true; }

echo "==> helm lint $chart"
helm lint --strict "$chart" 2>&1 | quiet
helm lint --strict "$chart" --set operator.watchNamespaces='{team-a,team-b}' \
  --set serviceMonitor.enabled=true --set networkPolicy.enabled=true 2>&1 | quiet

render() {
  local name="$1"; shift
  echo "==> helm template ($name) -> $out/$name.yaml"
  helm template weir "$chart" --namespace weir-system "$@" >"$out/$name.yaml" 2> >(quiet >&2)
}
render default
render namespaced --set operator.watchNamespaces='{team-a,team-b}'
render monitoring --set serviceMonitor.enabled=true --set networkPolicy.enabled=true \
  --set operator.watchNamespaces='{team-a}'
render ha --set operator.replicas=2
render single --set operator.leaderElection.enabled=false
render no-crd --set crds.install=false --set crds.keep=false

# Invalid combinations must fail rendering, not install something unsafe.
if helm template weir "$chart" --set operator.replicas=2 --set operator.leaderElection.enabled=false \
  >/dev/null 2>&1; then
  echo "test-chart: two replicas without leader election rendered; it must fail" >&2
  exit 1
fi

# The chart ships the generated CRD, not a copy: the rendered spec must be the file's.
if ! diff <(sed -n '/^spec:/,$p' crds/streamjob.yaml) \
  <(awk '/^kind: CustomResourceDefinition/{crd=1} crd && /^---/{crd=0} crd' "$out/default.yaml" | sed -n '/^spec:/,$p') >/dev/null; then
  echo "test-chart: the rendered CRD differs from crds/streamjob.yaml" >&2
  exit 1
fi
echo "chart OK: rendered manifests in $out"
