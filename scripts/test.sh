#!/usr/bin/env bash
# Runs every check and test on a fresh machine: installs what the tests need (libclang for
# RocksDB's bindings, the s3s-fs S3 server), then fmt, clippy and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}"
export PATH="$HOME/.cargo/bin:$PATH"

scripts/install-deps.sh

echo "==> helm lint and template"
scripts/test-chart.sh

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --release --workspace --all-targets -- -D warnings
echo "==> cargo test"
cargo test --release --workspace -- --test-threads="${WEIR_TEST_THREADS:-2}"
echo "==> benchmark smoke (tiny sizes, Weir only: keeps scripts/bench.sh working; figures are not checked)"
scripts/bench.sh --no-flink
