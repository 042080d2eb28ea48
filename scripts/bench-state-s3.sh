#!/usr/bin/env bash
# Workload (e) against a real S3 server: s3s-fs on loopback serving target/bench/state-s3/root.
# Loads 10M keys x 100 B, takes the two checkpoints of docs/bench-workloads.md to
# s3://weir/checkpoints, SIGKILLs the process and restores; prints the checkpoint lines and the
# recovery time (kill -> first output). Needs s3s-fs (scripts/test.sh installs it).
#
#   scripts/bench-state-s3.sh [KEYS]
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
KEYS="${1:-10000000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}"
(cd "$REPO" && cargo build --release -q -p weir)
WEIR="$CARGO_TARGET_DIR/release/weir-worker"
S3S="$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")"
[ -x "$S3S" ] || { echo "s3s-fs missing: cargo install s3s-fs@0.14.1 --features binary --locked" >&2; exit 1; }
D="$REPO/target/bench/state-s3"
rm -rf "$D" && mkdir -p "$D/root/weir"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$S3S" --host 127.0.0.1 --port "$PORT" --access-key bench --secret-key bench-secret "$D/root" > "$D/s3.log" 2>&1 &
S3=$!
trap 'kill $S3 2>/dev/null || true' EXIT
sleep 1
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
job() {
  cat > "$D/job.yaml" <<YAML
job:
  name: nexmark
  args: {query: state, keys: $KEYS, valueBytes: 100}
parallelism: 2
checkpointing: {interval: 1h, storage: 's3://weir/checkpoints', retained: 2, timeout: 10m}
restartStrategy: {type: none}
restore: $1
s3: {endpoint: 'http://127.0.0.1:$PORT', forcePathStyle: true}
state: {cacheBytes: 268435456}
YAML
}
job none
"$WEIR" local --job "$D/job.yaml" --work-dir "$D/work" > "$D/out1.log" 2> "$D/err1.log" &
P=$!
until grep -q ready_to_kill "$D/out1.log"; do
  kill -0 $P 2>/dev/null || { echo "the run ended early: $D/err1.log" >&2; exit 1; }
  sleep 0.5
done
kill -9 $P; T_KILL=$(date +%s%3N)
grep -h '"event":"checkpoint"' "$D/out1.log"
job latest
"$WEIR" local --job "$D/job.yaml" --work-dir "$D/work2" > "$D/out2.log" 2> "$D/err2.log" &
P=$!
until grep -q first_output_epoch_ms "$D/out2.log"; do
  kill -0 $P 2>/dev/null || { echo "the restore ended early: $D/err2.log" >&2; exit 1; }
  sleep 0.1
done
FIRST=$(grep -ho '"first_output_epoch_ms":[0-9]*' "$D/out2.log" | head -1 | cut -d: -f2)
grep -h "keyed state restored" "$D/err2.log" | sed -E 's/^[^ ]+ +INFO [a-z_:]+: //'
echo "recovery (kill -9 -> first new output): $((FIRST - T_KILL)) ms"
kill $P 2>/dev/null || true
