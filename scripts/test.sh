#!/usr/bin/env bash
# Runs every check and test on a fresh machine: installs what the tests need (libclang for
# RocksDB's bindings, the s3s-fs S3 server, helm/kubectl), then the chart checks, fmt, one
# release build of the whole workspace, clippy, the test suite, the benchmark smoke and the
# end-to-end suite on a real Kubernetes control plane (skipped with one line where none exists).
# Prints a per-binary summary of the tests and every SKIPPED line; under CI (`CI` set, as
# .ci/run does) a skipped test or end-to-end suite fails the run.
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

# summarize_tests LOG: passed, failed and ignored per test binary from cargo test's output,
# then every SKIPPED line (a test that returned early because something it needs is missing;
# libtest counts it as passed).
summarize_tests() {
  echo "==> test summary"
  awk '
    function count(what) {
      return match($0, "[0-9]+ " what) ? substr($0, RSTART, RLENGTH) + 0 : 0
    }
    /^ +Running / {
      source = $0; sub(/^ +Running /, "", source); sub(/ \(.*$/, "", source)
      binary = $NF; sub(/^.*\//, "", binary); sub(/\)$/, "", binary); sub(/-[0-9a-f]+$/, "", binary)
      name = binary " (" source ")"
      next
    }
    /^ +Doc-tests / { name = "doc-tests " $2; next }
    /^test result: / {
      p = count("passed"); f = count("failed"); i = count("ignored")
      printf "    %-60s %5d passed %3d failed %3d ignored\n", name, p, f, i
      tp += p; tf += f; ti += i
    }
    END { printf "    %-60s %5d passed %3d failed %3d ignored\n", "total", tp, tf, ti }
  ' "$1"
  local skipped
  skipped=$(grep -o 'SKIPPED [^ ]*: .*' "$1" | sort -u || true)
  if [ -n "$skipped" ]; then
    echo "==> skipped (counted as passed above): $(printf '%s\n' "$skipped" | wc -l)"
    printf '%s\n' "$skipped" | sed 's/^/    /'
  fi
}

# reject_skips_under_ci LOG: under CI (.ci/run exports CI=true) every test must really run.
reject_skips_under_ci() {
  if [ -n "${CI:-}" ] && grep -q 'SKIPPED [^ ]*: ' "$1"; then
    echo "==> CI is set and tests were skipped (listed above): failing" >&2
    exit 1
  fi
}

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
# Kept for the summary below, which is printed whether or not the tests passed.
TEST_LOG="$CARGO_TARGET_DIR/test-output.log"
set +e
cargo test --release --workspace --no-fail-fast -- --test-threads="${WEIR_TEST_THREADS:-2}" 2>&1 | tee "$TEST_LOG"
test_status=${PIPESTATUS[0]}
set -e
summarize_tests "$TEST_LOG"
[ "$test_status" -eq 0 ] || { echo "==> cargo test failed (exit $test_status)"; exit "$test_status"; }
reject_skips_under_ci "$TEST_LOG"
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
