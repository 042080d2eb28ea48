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

# shellcheck source=lib/pip-tool.sh
. "$(dirname "$0")/lib/pip-tool.sh"
install_pip_tool noida-db "$VERSION" "$VENV"
# The binary itself, not the Python wrapper, so a test's child PID is the broker's.
binary="$("$VENV/bin/python" -c 'import noida_db, os; print(os.path.join(os.path.dirname(noida_db.__file__), "noida-db"))')"
mkdir -p "$(dirname "$LINK")"
ln -sf "$binary" "$LINK"
echo "$LINK"
