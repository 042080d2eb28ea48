#!/usr/bin/env bash
# Installs schemathesis (pinned) from PyPI into a virtualenv under ~/.cache/weir-tools, linked as
# ~/.cache/weir-tools/bin/st: the rest_api contract test fuzzes a real JobManager with it against
# docs/jobmanager-api.yaml. Idempotent.
# Usage: scripts/install-schemathesis.sh     prints the binary's path on its last line
set -euo pipefail

VERSION="${WEIR_SCHEMATHESIS_VERSION:-4.32.5}"
TOOLS="${WEIR_TOOLS_DIR:-$HOME/.cache/weir-tools}"
VENV="$TOOLS/st-venv"
LINK="$TOOLS/bin/st"

installed() {
  "$VENV/bin/python" -c "import importlib.metadata as m; assert m.version('schemathesis') == '$VERSION'" 2>/dev/null
}

if ! installed; then
  echo "==> installing schemathesis $VERSION (API contract fuzzer for the REST tests)"
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
  fi
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$VERSION"
fi
mkdir -p "$(dirname "$LINK")"
ln -sf "$VENV/bin/st" "$LINK"
echo "$LINK"
