#!/usr/bin/env bash
# Installs the Flink side of the benchmarks (docs/bench-workloads.md). Idempotent.
#
#   scripts/install-flink.sh            # install or update; prints where things are
#   scripts/install-flink.sh --print-env  # only print FLINK_LIB=... BENCH_JAR=... (after an install)
#
# - Flink itself comes from PyPI: `apache-flink-libraries` ships Flink's jars (flink-dist with
#   the RocksDB state backend, flink-connector-files, log4j). It goes into a venv under
#   $WEIR_FLINK_HOME (default ~/.cache/weir-tools/flink), or with `pip --target` when venv is
#   unavailable.
# - Java 17 or newer (java and javac) must be installed: on Debian `apt-get install openjdk-17-jdk-headless`.
# - The benchmark sources in bench/flink/src are compiled with javac against those jars into
#   $WEIR_FLINK_HOME/weir-flink-bench.jar (rebuilt when the sources change).
# - $WEIR_FLINK_HOME/env.sh records FLINK_VERSION, FLINK_LIB and BENCH_JAR for scripts/bench-flink.sh.
set -euo pipefail

FLINK_VERSION=2.3.0
ROOT="${WEIR_FLINK_HOME:-$HOME/.cache/weir-tools/flink}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
SRC="$REPO/bench/flink/src"

die() { echo "install-flink: error: $*" >&2; exit 1; }
say() { echo "==> $*" >&2; }

if [ "${1:-}" = "--print-env" ]; then
  [ -f "$ROOT/env.sh" ] || die "not installed yet: run scripts/install-flink.sh"
  cat "$ROOT/env.sh"
  exit 0
fi

# ---- Java >= 17 ----
command -v java >/dev/null 2>&1 || die "java not found; install a JDK >= 17 (Debian: apt-get install openjdk-17-jdk-headless)"
command -v javac >/dev/null 2>&1 || die "javac not found; install a JDK (not only a JRE) >= 17 (Debian: apt-get install openjdk-17-jdk-headless)"
java_version="$(java -version 2>&1 | head -1 | sed -E 's/.*version "([^"]+)".*/\1/')"
java_major="${java_version%%.*}"
[ "$java_major" = "1" ] && java_major="$(echo "$java_version" | cut -d. -f2)"
case "$java_major" in ''|*[!0-9]*) die "cannot read the Java version from: $(java -version 2>&1 | head -1)";; esac
[ "$java_major" -ge 17 ] || die "Java $java_version found; Flink $FLINK_VERSION needs Java >= 17"
say "Java $java_version"

# ---- apache-flink-libraries from PyPI ----
command -v python3 >/dev/null 2>&1 || die "python3 not found (needed to install apache-flink-libraries from PyPI)"
mkdir -p "$ROOT"
find_lib() {
  local d
  for d in "$ROOT"/venv/lib/python3*/site-packages/pyflink/lib "$ROOT"/pylib/pyflink/lib; do
    if ls "$d"/flink-dist-"$FLINK_VERSION".jar >/dev/null 2>&1; then echo "$d"; return 0; fi
  done
  return 1
}
if ! LIB="$(find_lib)"; then
  say "installing apache-flink-libraries==$FLINK_VERSION into $ROOT (about 400 MB)"
  if python3 -m venv "$ROOT/venv" >/dev/null 2>&1 && [ -x "$ROOT/venv/bin/pip" ]; then
    "$ROOT/venv/bin/pip" install --quiet --disable-pip-version-check "apache-flink-libraries==$FLINK_VERSION" \
      || die "pip install apache-flink-libraries==$FLINK_VERSION failed (is PyPI reachable?)"
  else
    rm -rf "$ROOT/venv"
    python3 -m pip install --quiet --disable-pip-version-check --target "$ROOT/pylib" \
      "apache-flink-libraries==$FLINK_VERSION" \
      || die "pip install --target $ROOT/pylib apache-flink-libraries==$FLINK_VERSION failed (is PyPI reachable?)"
  fi
  LIB="$(find_lib)" || die "apache-flink-libraries installed but flink-dist-$FLINK_VERSION.jar not found under $ROOT"
fi
say "Flink $FLINK_VERSION jars in $LIB"
for jar in flink-dist flink-connector-files; do
  ls "$LIB/$jar-$FLINK_VERSION.jar" >/dev/null 2>&1 || die "$LIB/$jar-$FLINK_VERSION.jar missing"
done
if command -v unzip >/dev/null 2>&1; then
  unzip -l "$LIB/flink-dist-$FLINK_VERSION.jar" | grep 'EmbeddedRocksDBStateBackend.class' >/dev/null \
    || die "$LIB/flink-dist-$FLINK_VERSION.jar has no RocksDB state backend"
fi

# ---- compile the benchmark sources ----
JAR="$ROOT/weir-flink-bench.jar"
[ -d "$SRC" ] || die "sources not found at $SRC"
sum="$( (cd "$REPO/bench/flink" && find src -name '*.java' | LC_ALL=C sort | xargs cat log4j2.properties) | sha256sum | cut -d' ' -f1)"
if [ -f "$JAR" ] && [ "$(cat "$ROOT/weir-flink-bench.sha256" 2>/dev/null)" = "$sum" ]; then
  say "benchmark jar up to date: $JAR"
else
  say "compiling bench/flink/src into $JAR"
  build="$(mktemp -d)"
  trap 'rm -rf "$build"' EXIT
  mkdir -p "$build/classes"
  # shellcheck disable=SC2046
  javac --release 17 -nowarn -encoding UTF-8 -d "$build/classes" -cp "$LIB/*" $(find "$SRC" -name '*.java') \
    || die "javac failed"
  cp "$REPO/bench/flink/log4j2.properties" "$build/classes/"
  jar cf "$JAR.tmp" -C "$build/classes" . || die "jar failed"
  mv "$JAR.tmp" "$JAR"
  echo "$sum" > "$ROOT/weir-flink-bench.sha256"
fi

cat > "$ROOT/env.sh" <<EOF
FLINK_VERSION=$FLINK_VERSION
FLINK_LIB=$LIB
BENCH_JAR=$JAR
EOF
say "ready: $ROOT/env.sh"
cat "$ROOT/env.sh"
