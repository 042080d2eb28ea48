#!/usr/bin/env bash
# Runs the benchmarks of issue 7 (docs/bench-workloads.md) on Weir, and on Flink when it is
# installed, and prints the figures side by side with the Weir/Flink ratio per workload.
#
#   scripts/bench.sh [--size smoke|full] [--parallelism N] [--no-flink] [--flink-json FILE]
#                    [--worker BINARY] [--backend rocksdb|heap] [--state-keys N] [workload...]
#
# A workload with keyed state runs on RocksDB; `<workload>-heap` (count-100k-heap, q5-heap,
# state-heap, ...) runs it with `state.backend: heap`, and `--backend heap` does that for
# every workload given (or the default list).
#
# Workloads: q0 q1 q2 (a: stateless, from bid files), count-100k count-2m (b: keyed running
# count on RocksDB), q5 (c), q7 (d), state (e: ~1 GB of keyed state: checkpoint, kill -9,
# restore). Default: all for --size full; q2 count-100k q5 q7 state for --size smoke (about a
# minute). Each workload runs in its own `weir-worker local` process; CPU seconds are user +
# sys of that process from /usr/bin/time. Results: target/bench/weir.json.
#
# Flink: when scripts/install-flink.sh has been run (or --flink-json names an existing file),
# scripts/bench-flink.sh runs the same workloads at the same size (count-*/state also as
# count-*-heap and state-full) unless target/bench/flink.json already holds them for this size
# (--fresh-flink reruns it anyway). --no-flink skips Flink. --worker runs a given weir-worker
# binary instead of building one: to compare two commits on the same machine, keep a copy of
# the first one's binary.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
SIZE=smoke
PARALLELISM=2
FLINK=auto
FRESH_FLINK=0
FLINK_JSON="$REPO/target/bench/flink.json"
WORKLOADS=()
WEIR=""
BACKEND=rocksdb
STATE_KEYS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --size) SIZE="$2"; shift 2;;
    --parallelism) PARALLELISM="$2"; shift 2;;
    --no-flink) FLINK=no; shift;;
    --fresh-flink) FRESH_FLINK=1; shift;;
    --flink-json) FLINK_JSON="$2"; FLINK=file; shift 2;;
    --worker) WEIR="$(realpath "$2")"; shift 2;;
    --backend) BACKEND="$2"; shift 2;;
    --state-keys) STATE_KEYS="$2"; shift 2;;
    -h|--help) sed -n '2,20p' "$0"; exit 0;;
    -*) echo "bench: unknown option $1" >&2; exit 2;;
    *) WORKLOADS+=("$1"); shift;;
  esac
done

case "$SIZE" in
  smoke)
    A_EVENTS=100000; B_EVENTS=200000; C_EVENTS=100000; D_EVENTS=200000; E_KEYS=50000
    [ ${#WORKLOADS[@]} -eq 0 ] && WORKLOADS=(q2 count-100k q5 q7 state);;
  full)
    A_EVENTS=10000000; B_EVENTS=20000000; C_EVENTS=5000000; D_EVENTS=10000000; E_KEYS=10000000
    [ ${#WORKLOADS[@]} -eq 0 ] && WORKLOADS=(q0 q1 q2 count-100k count-2m q5 q7 state);;
  *) echo "bench: --size must be smoke or full" >&2; exit 2;;
esac
# Keys of workload (e), 100 bytes each: 10,000,000 is about 1 GB of state.
[ -n "$STATE_KEYS" ] && E_KEYS="$STATE_KEYS"
case "$BACKEND" in
  rocksdb) ;;
  heap)
    for i in "${!WORKLOADS[@]}"; do
      case "${WORKLOADS[$i]}" in
        count-100k|count-2m|q5|q7|state) WORKLOADS[$i]="${WORKLOADS[$i]}-heap";;
      esac
    done;;
  *) echo "bench: --backend must be rocksdb or heap" >&2; exit 2;;
esac
for w in "${WORKLOADS[@]}"; do
  case "$w" in
    q0|q1|q2|count-100k|count-2m|q5|q7|state) ;;
    count-100k-heap|count-2m-heap|q5-heap|q7-heap|state-heap) ;;
    *) echo "bench: unknown workload $w (q0 q1 q2 count-100k count-2m q5 q7 state, and -heap of the keyed ones)" >&2; exit 2;;
  esac
done
[ -x /usr/bin/time ] || { echo "bench: /usr/bin/time missing (Debian: apt-get install time)" >&2; exit 1; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}"
if [ -z "$WEIR" ]; then
  echo "--- building weir-worker (release) into $CARGO_TARGET_DIR" >&2
  # `--bin` rather than `-p weir`: selecting one package would resolve features for it alone,
  # and the different feature set would rebuild RocksDB's C++ beside the workspace build.
  (cd "$REPO" && cargo build --release -q --bin weir-worker)
  WEIR="$CARGO_TARGET_DIR/release/weir-worker"
fi
[ -x "$WEIR" ] || { echo "bench: $WEIR is not an executable weir-worker" >&2; exit 2; }

BENCH_DIR="$REPO/target/bench"
RUNS="$BENCH_DIR/weir-runs"
LOGS="$BENCH_DIR/weir-logs"
OUT="$BENCH_DIR/weir.json"
mkdir -p "$RUNS" "$LOGS"
RESULTS="$RUNS/results.jsonl"
: > "$RESULTS"

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# Shows the job's progress lines (shortened) while keeping its whole log.
progress_filter() {
  local name="$1" log="$2"
  tee -a "$log" | grep --line-buffered -E 'progress|checkpoint completed|\[weir' \
    | sed -u -E "s/^[^ ]+ +INFO [a-z_:]+: /[weir $name] /" >&2 || true
}

# The job document's `state:` for workload NAME: heap for `*-heap`, else RocksDB with the
# same memory for state as Flink's 512 MB of managed memory: 256 MB per keyed subtask.
state_config() {
  case "$1" in
    *-heap) echo "{backend: heap}";;
    *) echo "{backend: rocksdb, cacheBytes: 268435456}";;
  esac
}

# job_doc FILE ARGS CHECKPOINT_INTERVAL STATE: the job document of one run.
job_doc() {
  cat > "$1" <<EOF
job:
  name: nexmark
  args: {$2}
parallelism: $PARALLELISM
checkpointing:
  interval: $3
  storage: file://$(dirname "$1")/checkpoints
  retained: 2
  timeout: 10m
restartStrategy: {type: none}
restore: none
state: $4
EOF
}

# run_job NAME ARGS: one process, timed; appends the merged result object to $RESULTS.
run_job() {
  local name="$1" args="$2" work="$RUNS/$1" load
  rm -rf "$work"; mkdir -p "$work"
  job_doc "$work/job.yaml" "$args" 5s "$(state_config "$name")"
  load="$(loadavg)"
  echo "--- $name (load average before: $load)" >&2
  : > "$LOGS/$name.log"
  /usr/bin/time -f '%U %S %e %M' -o "$work/time" \
    "$WEIR" local --job "$work/job.yaml" --work-dir "$work/work" \
      > "$work/stdout" 2> >(progress_filter "$name" "$LOGS/$name.log") \
    || { echo "bench: $name failed; see $LOGS/$name.log" >&2; return 1; }
  sleep 0.2
  rm -rf "$work/work"
  python3 - "$name" "$load" "$work" >> "$RESULTS" <<'EOF'
import json, sys
name, load, work = sys.argv[1], sys.argv[2], sys.argv[3]
res = [o for o in (json.loads(l) for l in open(work + "/stdout") if l.startswith('{')) if "workload" in o][-1]
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

# Workload (a) reads bid files; the same files as Flink's (byte-identical generators).
bid_files() {
  local n="$1" dir="$BENCH_DIR/data/bids-$1"
  if [ ! -f "$dir/_SUCCESS" ]; then
    echo "--- generating $n bids into $dir" >&2
    "$WEIR" nexmark-gen --count "$n" --shards 4 --out "$dir" >&2
  fi
  echo "$dir"
}

# Workload (e): load, checkpoint twice, kill -9, restart from the latest checkpoint.
# NAME is state or state-heap. The task's synchronous snapshot pause comes from its debug log.
run_state() {
  local name="$1" work="$RUNS/$1" keys="$E_KEYS" load pid t_kill t_restart
  rm -rf "$work"; mkdir -p "$work"
  job_doc "$work/job.yaml" "query: state, keys: $keys, valueBytes: 100" 1h "$(state_config "$name")"
  load="$(loadavg)"
  echo "--- $name: $keys keys x 100 bytes (load average before: $load)" >&2
  : > "$LOGS/$name.log"; : > "$LOGS/$name-restore.log"
  WEIR_LOG="info,weir::runtime::task=debug" /usr/bin/time -f '%U %S %e %M' -o "$work/time" \
    "$WEIR" local --job "$work/job.yaml" --work-dir "$work/work" \
    > "$work/stdout" 2> >(progress_filter "$name" "$LOGS/$name.log") &
  pid=$!
  while ! grep -q '"event":"ready_to_kill"' "$work/stdout" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { echo "bench: $name run died; see $LOGS/$name.log" >&2; return 1; }
    sleep 0.1
  done
  grep '"event":"checkpoint"' "$work/stdout" | sed "s/^/[weir $name] /" >&2
  # /usr/bin/time's child running $WEIR is the worker: kill it, not time. Not by name: a
  # --worker binary may be called anything (killing time instead left the worker running
  # beside its restore); time's other child is the log filter.
  local worker="" child
  for child in $(pgrep -P "$pid"); do
    if [ "$(readlink "/proc/$child/exe")" = "$WEIR" ]; then worker="$child"; fi
  done
  [ -n "$worker" ] || worker="$pid"
  t_kill="$(date +%s%3N)"
  kill -9 "$worker"
  wait "$pid" 2>/dev/null || true
  echo "[weir $name] killed (kill -9) at $t_kill; restarting with --restore latest" >&2
  t_restart="$(date +%s%3N)"
  /usr/bin/time -f '%U %S %e %M' -o "$work/time-restore" \
    "$WEIR" local --job "$work/job.yaml" --work-dir "$work/work-restore" --restore latest \
      > "$work/stdout-restore" 2> >(progress_filter "$name-restore" "$LOGS/$name-restore.log") \
    || { echo "bench: $name restore failed; see $LOGS/$name-restore.log" >&2; return 1; }
  sleep 0.2
  grep -h 'restoring' "$LOGS/$name-restore.log" | head -1 | cut -d' ' -f1 > "$work/restore-log-time" || true
  rm -rf "$work/work" "$work/work-restore"
  python3 - "$work" "$t_kill" "$t_restart" "$load" "$name" "$LOGS/$name.log" >> "$RESULTS" <<'EOF'
import datetime, json, os, re, sys
work, t_kill, t_restart, load, name, log = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
# The task's pause per snapshot: "keyed snapshot: synchronous part done ... elapsed=12.3ms".
units = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1000.0}
pauses = [float(m.group(1)) * units[m.group(2)]
          for line in open(log, errors="replace") if "synchronous part done" in line
          for m in [re.search(r"elapsed=([0-9.]+)(ns|µs|us|ms|s)\b", line)] if m]
def result(path):
    objs = [json.loads(l) for l in open(path) if l.startswith('{')]
    return [o for o in objs if "workload" in o][-1]
first, rest = result(work + "/stdout"), result(work + "/stdout-restore")
def du(path):
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total
restore_ms = None
stamp = open(work + "/restore-log-time").read().strip()
if stamp:
    t = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    restore_ms = round(t.timestamp() * 1000) - t_kill
cps = first["checkpoints"]
res = dict(name=name, workload="state", engine="weir", events=first["keys"], keys=first["keys"],
           sync_pause_ms_max=round(max(pauses), 3) if pauses else None,
           sync_pause_ms_per_snapshot=[round(p, 3) for p in pauses],
           value_bytes=first["value_bytes"], load_avg_before=load, load_s=first["load_s"],
           load_cpu_s=first["load_cpu_s"],
           load_events_per_s=round(first["keys"] / first["load_s"]),
           load_events_per_cpu_s=round(first["keys"] / max(first["load_cpu_s"], 1e-9)),
           # size = bytes the checkpoint wrote (as Flink reports it); state = what it restores.
           checkpoint_full_duration_ms=cps[0]["duration_ms"],
           checkpoint_full_size_bytes=cps[0].get("checkpointed_size_bytes") or cps[0]["state_size_bytes"],
           checkpoint_full_state_bytes=cps[0]["state_size_bytes"],
           checkpoint_next_duration_ms=cps[1]["duration_ms"],
           checkpoint_next_size_bytes=cps[1].get("checkpointed_size_bytes") or cps[1]["state_size_bytes"],
           checkpoint_next_state_bytes=cps[1]["state_size_bytes"],
           checkpoints_dir_bytes=du(work + "/checkpoints"), restored_from=cps[1]["external_path"],
           recovery_ms=rest["first_output_epoch_ms"] - t_kill,
           process_start_after_kill_ms=t_restart - t_kill,
           job_submitted_after_kill_ms=rest["job_submitted_epoch_ms"] - t_kill,
           restore_started_after_kill_ms=restore_ms,
           missing_keys_seen=rest["missing_keys_seen"], outputs_after_restore=rest["outputs_after_restore"],
           checkpoints=cps)
print(json.dumps(res))
EOF
  echo "[weir $name] recovery (kill -9 -> first new output): $(tail -1 "$RESULTS" | python3 -c 'import json,sys; print(json.load(sys.stdin)["recovery_ms"])') ms" >&2
}

echo "Weir, size $SIZE, parallelism $PARALLELISM: ${WORKLOADS[*]}" >&2
for w in "${WORKLOADS[@]}"; do
  case "${w%-heap}" in
    q0|q1|q2) run_job "$w" "query: $w, events: $A_EVENTS, input: $(bid_files "$A_EVENTS")";;
    count-100k) run_job "$w" "query: count, events: $B_EVENTS, keys: 100000";;
    count-2m) run_job "$w" "query: count, events: $B_EVENTS, keys: 2000000";;
    q5) run_job "$w" "query: q5, events: $C_EVENTS";;
    q7) run_job "$w" "query: q7, events: $D_EVENTS";;
    state) run_state "$w";;
  esac
done

python3 - "$RESULTS" "$OUT" "$SIZE" "$PARALLELISM" <<'EOF'
import json, os, platform, sys, time
results_path, out, size, par = sys.argv[1:5]
rows = [json.loads(l) for l in open(results_path) if l.strip()]
doc = dict(engine="weir", size=size, parallelism=int(par),
           finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), nproc=os.cpu_count(),
           kernel=platform.release(), workloads=rows)
with open(out, "w") as f:
    json.dump(doc, f, indent=1)
EOF

# Flink: run it (same size and workloads) when installed, unless its results are already there.
if [ "$FLINK" = auto ]; then
  FLINK=no
  "$REPO/scripts/install-flink.sh" --print-env >/dev/null 2>&1 && FLINK=yes
  if [ "$FLINK" = yes ]; then
    FLINK_WORKLOADS=()
    for w in "${WORKLOADS[@]}"; do
      case "$w" in
        count-100k|count-2m) FLINK_WORKLOADS+=("$w" "$w-heap");;
        count-100k-heap|count-2m-heap) FLINK_WORKLOADS+=("$w");;
        q5-heap|q7-heap) FLINK_WORKLOADS+=("${w%-heap}");;
        state|state-heap) FLINK_WORKLOADS+=(state state-full);;
        *) FLINK_WORKLOADS+=("$w");;
      esac
    done
    have="$(python3 - "$FLINK_JSON" "$SIZE" "${FLINK_WORKLOADS[@]}" <<'EOF'
import json, sys
path, size, want = sys.argv[1], sys.argv[2], set(sys.argv[3:])
try:
    doc = json.load(open(path))
except Exception:
    print("no"); sys.exit()
names = {r["name"] for r in doc.get("workloads", [])}
print("yes" if doc.get("size") == size and want <= names else "no")
EOF
)"
    if [ "$have" = no ] || [ "$FRESH_FLINK" = 1 ]; then
      echo "--- Flink: scripts/bench-flink.sh --size $SIZE ${FLINK_WORKLOADS[*]}" >&2
      "$REPO/scripts/bench-flink.sh" --size "$SIZE" --parallelism "$PARALLELISM" --out "$FLINK_JSON" "${FLINK_WORKLOADS[@]}" >&2 \
        || { echo "bench: the Flink run failed; printing Weir alone" >&2; FLINK=no; }
    else
      echo "--- Flink: reusing $FLINK_JSON (size $SIZE; --fresh-flink to rerun)" >&2
    fi
  fi
fi
[ "$FLINK" = no ] && FLINK_JSON=""

python3 - "$OUT" "$FLINK_JSON" <<'EOF'
import json, sys
weir = json.load(open(sys.argv[1]))
flink = {}
if sys.argv[2]:
    try:
        flink = {r["name"]: r for r in json.load(open(sys.argv[2]))["workloads"]}
    except Exception as e:
        print(f"(no Flink figures: {e})")
def f(v, scale=1.0, digits=0):
    return "-" if v is None else f"{v / scale:,.{digits}f}"
def ratio(a, b, higher_is_better=True):
    if a is None or b is None or a == 0 or b == 0:
        return "-"
    return f"{(a / b if higher_is_better else b / a):.2f}x"
print(f"\nWeir, size {weir['size']}, parallelism {weir['parallelism']} -> {sys.argv[1]}")
hdr = (f"{'workload':<16}{'events':>12}{'outputs':>11}{'wall s':>8}{'CPU s':>8}{'events/s':>12}{'ev/CPU-s':>12}"
       f"{'CPU-s/M':>9}{'p50 ms':>9}{'p99 ms':>9}{'ckpt ms':>9}{'ckpt MB':>9}  vs Flink (ev/CPU-s)")
print(hdr); print("-" * len(hdr))
for r in weir["workloads"]:
    if r["workload"] == "state":
        continue
    lat = r.get("latency_us") or {}
    cp = r.get("checkpoints") or {}
    vs = []
    base = r["name"].removesuffix("-heap")
    for fname in dict.fromkeys((r["name"], base, base + "-heap")):
        fr = flink.get(fname)
        if fr:
            vs.append(f"{fname}: {ratio(r['events_per_cpu_s'], fr['events_per_cpu_s'])}")
    print(f"{r['name']:<16}{r['events']:>12,}{r['outputs']:>11,}{r['wall_s']:>8.1f}{r['cpu_s']:>8.1f}"
          f"{r['events_per_s']:>12,}{r['events_per_cpu_s']:>12,}{r['cpu_s_per_million']:>9.2f}"
          f"{f(lat.get('p50'), 1000, 1):>9}{f(lat.get('p99'), 1000, 1):>9}{f(cp.get('duration_ms_p50')):>9}"
          f"{f(cp.get('last_state_size_bytes'), 1e6, 1):>9}  {'  '.join(vs) or '-'}")
for r in weir["workloads"]:
    if r["workload"] != "state":
        continue
    print(f"\n{r['name']} (e): {r['keys']:,} keys x {r['value_bytes']} B; load {r['load_s']:.1f} s, "
          f"{r['load_events_per_cpu_s']:,} keys/CPU-s; load avg before {r['load_avg_before']}")
    print(f"  checkpoint of the whole state: {r['checkpoint_full_duration_ms']:,} ms, "
          f"{r['checkpoint_full_size_bytes'] / 1e6:,.1f} MB; next: {r['checkpoint_next_duration_ms']:,} ms, "
          f"{r['checkpoint_next_size_bytes'] / 1e6:,.1f} MB written of {r.get('checkpoint_next_state_bytes', 0) / 1e6:,.1f} MB state; "
          f"folder {r['checkpoints_dir_bytes'] / 1e6:,.1f} MB")
    print(f"  task pause (synchronous part) per snapshot, ms: {r.get('sync_pause_ms_per_snapshot')}")
    print(f"  recovery (kill -9 -> first new output): {r['recovery_ms']:,} ms "
          f"(restore started after {f(r['restore_started_after_kill_ms'])} ms); missing keys {r['missing_keys_seen']}")
    for fname in ("state", "state-full"):
        fr = flink.get(fname)
        if fr:
            print(f"  Flink {fname}: checkpoint {fr['checkpoint_full_duration_ms']:,} ms "
                  f"(Weir/Flink time {r['checkpoint_full_duration_ms'] / fr['checkpoint_full_duration_ms']:.2f}; target <= 0.33), "
                  f"recovery {fr['recovery_ms']:,} ms "
                  f"(Weir/Flink time {r['recovery_ms'] / fr['recovery_ms']:.2f}; target <= 0.33)")
EOF
