#!/usr/bin/env bash
# Runs the Flink side of the benchmarks (docs/bench-workloads.md) and writes target/bench/flink.json.
#
#   scripts/bench-flink.sh [--size smoke|full] [--parallelism N] [--out FILE] [workload...]
#
# Workloads: q0 q1 q2 (a: stateless, from files), count-100k count-2m (b: keyed count, RocksDB),
# count-100k-heap count-2m-heap (b on heap state), q5 (c), q7 (d), state and state-full (e: ~1 GB
# of state, checkpoint + kill -9 + restore; incremental resp. full RocksDB checkpoints). Default: all of them for --size full; q2 count-100k q5 state
# for --size smoke (about a minute; JVM start-up dominates). Installs the Flink side first (scripts/install-flink.sh).
#
# Each workload runs in its own JVM (a local MiniCluster); CPU seconds are user + sys of that JVM
# from /usr/bin/time. Progress goes to stderr, Flink's own log to target/bench/flink-logs/.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
SIZE=smoke
PARALLELISM=2
OUT="$REPO/target/bench/flink.json"
WORKLOADS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --size) SIZE="$2"; shift 2;;
    --parallelism) PARALLELISM="$2"; shift 2;;
    --out) OUT="$2"; shift 2;;
    -h|--help) sed -n '2,12p' "$0"; exit 0;;
    -*) echo "bench-flink: unknown option $1" >&2; exit 2;;
    *) WORKLOADS+=("$1"); shift;;
  esac
done

case "$SIZE" in
  smoke)
    A_EVENTS=100000; B_EVENTS=200000; B_KEYS_SMALL=100000; B_KEYS_LARGE=2000000
    C_EVENTS=100000; D_EVENTS=200000; E_KEYS=50000
    [ ${#WORKLOADS[@]} -eq 0 ] && WORKLOADS=(q2 count-100k q5 state);;
  full)
    A_EVENTS=10000000; B_EVENTS=20000000; B_KEYS_SMALL=100000; B_KEYS_LARGE=2000000
    C_EVENTS=5000000; D_EVENTS=10000000; E_KEYS=10000000
    [ ${#WORKLOADS[@]} -eq 0 ] && WORKLOADS=(q0 q1 q2 count-100k count-2m count-100k-heap count-2m-heap q5 q7 state state-full);;
  *) echo "bench-flink: --size must be smoke or full" >&2; exit 2;;
esac
for w in "${WORKLOADS[@]}"; do
  case "$w" in
    q0|q1|q2|count-100k|count-2m|count-100k-heap|count-2m-heap|q5|q7|state|state-full) ;;
    *) echo "bench-flink: unknown workload $w (q0 q1 q2 count-100k count-2m count-100k-heap count-2m-heap q5 q7 state state-full)" >&2; exit 2;;
  esac
done

[ -x /usr/bin/time ] || { echo "bench-flink: /usr/bin/time missing (Debian: apt-get install time)" >&2; exit 1; }
"$REPO/scripts/install-flink.sh" >/dev/null
# shellcheck disable=SC1090
. <("$REPO/scripts/install-flink.sh" --print-env)

BENCH_DIR="$REPO/target/bench"
LOGS="$BENCH_DIR/flink-logs"
RUNS="$BENCH_DIR/flink-runs"
mkdir -p "$LOGS" "$RUNS" "$(dirname "$OUT")"
JAVA_OPTS=(-Xms2g -Xmx3g -XX:+UseG1GC)
CP="$BENCH_JAR:$FLINK_LIB/*"
RESULTS="$RUNS/results.jsonl"
: > "$RESULTS"

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# Shows the "[flink ...]" progress lines of a run's stderr, keeps everything in the log.
progress_filter() { tee -a "$1" | grep --line-buffered '^\[flink' >&2 || true; }

# run_job NAME EVENTS ARGS... : one JVM, timed; appends the merged result object to $RESULTS.
run_job() {
  local name="$1" events="$2"; shift 2
  local work="$RUNS/$name" load
  rm -rf "$work"; mkdir -p "$work"
  load="$(loadavg)"
  echo "--- $name (load average before: $load)" >&2
  /usr/bin/time -f '%U %S %e %M' -o "$work/time" \
    java "${JAVA_OPTS[@]}" -cp "$CP" weir.bench.Bench --parallelism "$PARALLELISM" --work-dir "$work" \
      --events "$events" "$@" > "$work/stdout" 2> >(progress_filter "$LOGS/$name.log") \
    || { echo "bench-flink: $name failed; see $LOGS/$name.log" >&2; return 1; }
  sleep 0.2 # let the progress filter drain
  python3 - "$name" "$load" "$work" >> "$RESULTS" <<'EOF'
import json, sys
name, load, work = sys.argv[1], sys.argv[2], sys.argv[3]
res = [json.loads(l) for l in open(work + "/stdout") if l.startswith('{"workload"')][-1]
user, sys_, wall, rss = open(work + "/time").read().split()[-4:]
cpu = float(user) + float(sys_)
ev = res["events"]
res.update(name=name, load_avg_before=load, user_s=float(user), sys_s=float(sys_), cpu_s=round(cpu, 3),
           process_wall_s=float(wall), max_rss_kb=int(rss),
           events_per_s=round(ev / res["wall_s"]), events_per_cpu_s=round(ev / cpu),
           cpu_s_per_million=round(cpu / (ev / 1e6), 3))
print(json.dumps(res))
EOF
}

# Workload (a) reads bid files made once by the generator.
bid_files() {
  local n="$1" dir="$BENCH_DIR/data/bids-$1"
  if [ ! -f "$dir/_SUCCESS" ]; then
    echo "--- generating $n bids into $dir" >&2
    java -cp "$CP" weir.bench.Generate bids --count "$n" --shards 4 --out "$dir" 2> >(grep --line-buffered . >&2)
  fi
  echo "$dir"
}

# Workload (e): load, checkpoint twice, kill -9, restart from the latest checkpoint, time to first output.
# run_state NAME INCREMENTAL(true|false)
run_state() {
  local name="$1" incremental="$2" work="$RUNS/$1" keys="$E_KEYS" load pid chk t_kill
  rm -rf "$work"; mkdir -p "$work"
  load="$(loadavg)"
  echo "--- $name: $keys keys x 100 bytes, RocksDB, incremental checkpoints $incremental (load average before: $load)" >&2
  java "${JAVA_OPTS[@]}" -cp "$CP" weir.bench.Bench --workload state --parallelism "$PARALLELISM" \
    --keys "$keys" --incremental "$incremental" --checkpoint-interval-ms 3600000 --work-dir "$work" \
    > "$work/stdout" 2> >(progress_filter "$LOGS/$name.log") &
  pid=$!
  while ! grep -q '"event":"ready_to_kill"' "$work/stdout" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { echo "bench-flink: $name run died; see $LOGS/$name.log" >&2; return 1; }
    sleep 0.2
  done
  grep '^{"event":"checkpoint"' "$work/stdout" | sed 's/^/[flink state] /' >&2
  chk="$(grep '"event":"ready_to_kill"' "$work/stdout" | python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["checkpoint"])')"
  t_kill="$(date +%s%3N)"
  kill -9 "$pid"
  wait "$pid" 2>/dev/null || true
  echo "[flink state] killed (kill -9) at $t_kill; restarting from $chk" >&2
  /usr/bin/time -f '%U %S %e %M' -o "$work/time-restore" \
    java "${JAVA_OPTS[@]}" -cp "$CP" weir.bench.Bench --workload state --parallelism "$PARALLELISM" \
      --keys "$keys" --incremental "$incremental" --checkpoint-interval-ms 3600000 --work-dir "$work" --restore "$chk" \
      > "$work/stdout-restore" 2> >(progress_filter "$LOGS/$name-restore.log") \
    || { echo "bench-flink: $name restore failed; see $LOGS/$name-restore.log" >&2; return 1; }
  sleep 0.2
  python3 - "$work" "$t_kill" "$load" "$name" >> "$RESULTS" <<'EOF'
import json, os, sys
work, t_kill, load, name = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
first = [json.loads(l) for l in open(work + "/stdout") if l.startswith('{"workload"')][-1]
rest = [json.loads(l) for l in open(work + "/stdout-restore") if l.startswith('{"workload"')][-1]
def du(path):
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total
cps = first["checkpoints"]
res = dict(name=name, workload="state", engine="flink", events=first["keys"], keys=first["keys"],
           value_bytes=first["value_bytes"], backend=first["backend"], incremental=first["incremental"],
           load_avg_before=load, load_s=first["load_s"], load_cpu_s=first["load_cpu_s"],
           load_events_per_s=round(first["keys"] / first["load_s"]),
           load_events_per_cpu_s=round(first["keys"] / first["load_cpu_s"]),
           checkpoint_full_duration_ms=cps[0]["duration_ms"], checkpoint_full_size_bytes=cps[0]["checkpointed_size_bytes"],
           checkpoint_full_state_size_bytes=cps[0]["state_size_bytes"],
           checkpoint_next_duration_ms=cps[1]["duration_ms"], checkpoint_next_size_bytes=cps[1]["checkpointed_size_bytes"],
           checkpoints_dir_bytes=du(work + "/checkpoints"),
           restored_from=cps[1]["external_path"],
           recovery_ms=rest["first_output_epoch_ms"] - t_kill,
           jvm_start_after_kill_ms=rest["jvm_start_epoch_ms"] - t_kill,
           restore_started_after_kill_ms=(rest["restore_epoch_ms"] - t_kill) if rest["restore_epoch_ms"] else None,
           missing_keys_seen=rest["missing_keys_seen"], outputs_after_restore=rest["outputs_after_restore"],
           checkpoints=cps)
print(json.dumps(res))
EOF
  echo "[flink state] recovery (kill -9 -> first new output): $(tail -1 "$RESULTS" | python3 -c 'import json,sys; print(json.load(sys.stdin)["recovery_ms"])') ms" >&2
}

echo "Flink $FLINK_VERSION, size $SIZE, parallelism $PARALLELISM: ${WORKLOADS[*]}" >&2
for w in "${WORKLOADS[@]}"; do
  case "$w" in
    q0|q1|q2) run_job "$w" "$A_EVENTS" --workload "$w" --input "$(bid_files "$A_EVENTS")";;
    count-100k) run_job "$w" "$B_EVENTS" --workload count --keys "$B_KEYS_SMALL" --backend rocksdb;;
    count-2m) run_job "$w" "$B_EVENTS" --workload count --keys "$B_KEYS_LARGE" --backend rocksdb;;
    count-100k-heap) run_job "$w" "$B_EVENTS" --workload count --keys "$B_KEYS_SMALL" --backend heap;;
    count-2m-heap) run_job "$w" "$B_EVENTS" --workload count --keys "$B_KEYS_LARGE" --backend heap;;
    q5) run_job "$w" "$C_EVENTS" --workload q5 --backend rocksdb;;
    q7) run_job "$w" "$D_EVENTS" --workload q7 --backend rocksdb;;
    state) run_state state true;;
    state-full) run_state state-full false;;
  esac
done

python3 - "$RESULTS" "$OUT" "$SIZE" "$FLINK_VERSION" "$PARALLELISM" <<'EOF'
import json, os, platform, subprocess, sys, time
results_path, out, size, version, par = sys.argv[1:6]
rows = [json.loads(l) for l in open(results_path) if l.strip()]
java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()[0]
doc = dict(engine="flink", flink_version=version, size=size, parallelism=int(par),
           finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), nproc=os.cpu_count(),
           java=java, kernel=platform.release(), workloads=rows)
with open(out, "w") as f:
    json.dump(doc, f, indent=1)
def fmt(v, scale=1.0, digits=0):
    return "-" if v is None else f"{v / scale:,.{digits}f}"
print(f"\nFlink {version}, size {size}, parallelism {par} -> {out}")
hdr = f"{'workload':<16}{'events':>12}{'wall s':>9}{'CPU s':>9}{'events/s':>12}{'ev/CPU-s':>12}{'CPU-s/M':>9}{'p50 ms':>9}{'p99 ms':>9}{'ckpt ms':>9}{'ckpt MB':>9}"
print(hdr); print("-" * len(hdr))
for r in rows:
    if r["workload"] == "state":
        print(f"{r['name']:<16}{r['keys']:>12,}{r['load_s']:>9.1f}{r['load_cpu_s']:>9.1f}{r['load_events_per_s']:>12,}"
              f"{r['load_events_per_cpu_s']:>12,}{'':>9}{'':>9}{'':>9}{r['checkpoint_full_duration_ms']:>9,}"
              f"{r['checkpoint_full_size_bytes'] / 1e6:>9,.0f}   recovery {r['recovery_ms']:,} ms")
        continue
    lat = r.get("latency_us") or {}
    cp = r.get("checkpoints") or {}
    print(f"{r['name']:<16}{r['events']:>12,}{r['wall_s']:>9.1f}{r['cpu_s']:>9.1f}{r['events_per_s']:>12,}"
          f"{r['events_per_cpu_s']:>12,}{r['cpu_s_per_million']:>9.2f}{fmt(lat.get('p50'), 1000, 1):>9}"
          f"{fmt(lat.get('p99'), 1000, 1):>9}{fmt(cp.get('duration_ms_p50')):>9}"
          f"{fmt(cp.get('last_state_size_bytes'), 1e6, 1):>9}")
EOF
