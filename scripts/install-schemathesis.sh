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

# shellcheck source=lib/pip-tool.sh
. "$(dirname "$0")/lib/pip-tool.sh"
install_pip_tool schemathesis "$VERSION" "$VENV"
mkdir -p "$(dirname "$LINK")"
ln -sf "$VENV/bin/st" "$LINK"
echo "$LINK"
