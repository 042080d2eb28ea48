#!/usr/bin/env bash
# Runs every check and test on a fresh machine: installs what the tests need (libclang for
# RocksDB's bindings, the s3s-fs S3 server, helm/kubectl), then the chart checks, fmt, one
# release build of the whole workspace, clippy, the test suite, the benchmark smoke and the
# end-to-end suite on a real Kubernetes control plane (skipped with one line where none exists).
#
# Every cargo command here selects the whole workspace (or a `--bin`, which resolves features
# the same way), so RocksDB's C++ is compiled once per target directory: `-p <package>`
# would unify features differently and rebuild it.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}"
export PATH="$HOME/.cargo/bin:$PATH"

PHASES=()
phase_start=$SECONDS
# phase NAME: closes the running phase under NAME and starts the next one.
phase() {
  PHASES+=("$(printf '%-12s %4ds' "$1" $((SECONDS - phase_start)))")
  phase_start=$SECONDS
}
report() {
  echo "==> phase times (total ${SECONDS}s)"
  printf '    %s\n' "${PHASES[@]}"
}
trap report EXIT

scripts/install-deps.sh
phase deps

echo "==> helm lint and template"
scripts/test-chart.sh
echo "==> cargo fmt --check"
cargo fmt --all -- --check
phase chart+fmt

echo "==> cargo build (release, whole workspace: binaries and test binaries)"
cargo build --release --workspace --bins
cargo test --release --workspace --no-run
phase build

echo "==> cargo clippy"
cargo clippy --release --workspace --all-targets -- -D warnings
phase clippy

echo "==> cargo test"
cargo test --release --workspace -- --test-threads="${WEIR_TEST_THREADS:-2}"
phase tests

echo "==> benchmark smoke (tiny sizes, Weir only: keeps scripts/bench.sh working; figures are not checked)"
scripts/bench.sh --no-flink
scripts/bench-kafka.sh
phase bench-smoke

if [ -x scripts/e2e.sh ]; then
  echo "==> end-to-end suite on a real Kubernetes control plane"
  scripts/e2e.sh
  phase e2e
fi
