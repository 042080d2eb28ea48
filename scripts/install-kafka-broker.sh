#!/usr/bin/env bash
# Installs the Kafka-protocol broker the Kafka tests start: `noida-db` (pinned) from PyPI into a
# virtualenv under ~/.cache/weir-tools, linked as ~/.cache/weir-tools/bin/noida-db. Idempotent.
#
# No Apache Kafka distribution is installable here; noida-db is one binary imitating a single
# Kafka 3.8 broker (KRaft) with transactions, read_committed and producer fencing. Its limits:
# one broker, data in memory, and no transaction timeout (an abandoned transaction stays open
# until its transactional id is initialised again).
# Usage: scripts/install-kafka-broker.sh     prints the broker's path on its last line
set -euo pipefail

VERSION="${WEIR_NOIDA_VERSION:-0.2.3}"
TOOLS="${WEIR_TOOLS_DIR:-$HOME/.cache/weir-tools}"
VENV="$TOOLS/kafka-venv"
LINK="$TOOLS/bin/noida-db"

installed() {
  "$VENV/bin/python" -c "import importlib.metadata as m; assert m.version('noida-db') == '$VERSION'" 2>/dev/null
}

if ! installed; then
  echo "==> installing noida-db $VERSION (Kafka-protocol broker for the Kafka tests)"
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
  fi
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "noida-db==$VERSION"
fi
# The binary itself, not the Python wrapper, so a test's child PID is the broker's.
binary="$("$VENV/bin/python" -c 'import noida_db, os; print(os.path.join(os.path.dirname(noida_db.__file__), "noida-db"))')"
mkdir -p "$(dirname "$LINK")"
ln -sf "$binary" "$LINK"
echo "$LINK"
