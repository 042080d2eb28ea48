#!/usr/bin/env bash
# Kafka benchmark: Kafka -> stateless map -> Kafka and Kafka -> keyed count -> Kafka (job
# `kafka-bench`, worker/src/jobs/kafka_bench.rs) in `weir-worker local` at parallelism 2, against
# a real Kafka-protocol broker (noida-db, scripts/install-kafka-broker.sh) started on a free
# loopback port for this run, with the exactly-once Kafka sink and checkpoints every 1 s and 5 s.
#
#   scripts/bench-kafka.sh [--size smoke|full] [--modes "map count"] [--intervals "1s 5s"]
#                          [--rate N] [--latency-events N] [--fill-events N] [--keys N]
#
# Per mode and checkpoint interval, two runs, each its own `weir-worker local` process:
#  - latency: the job runs (unbounded source); a producer writes --latency-events records at a
#    fixed --rate, each stamped with its produce time `ts` (ms); a `read_committed` consumer of
#    the output topic takes visible_time - ts per output record -> p50/p99/max. CPU of the
#    worker (/proc/<pid>/stat user+sys) between the first produce and the last record seen.
#  - throughput: the input topic pre-filled with --fill-events records; the job reads it as a
#    bounded source (`bounded: true`) and finishes; events/CPU-s = records / (user+sys CPU
#    seconds of the whole weir-worker process, /usr/bin/time, start-up included); events/s =
#    records / the job's wall time (submission -> last commit). The output is counted back.
# Topics have 2 partitions (one per source subtask). The producer/consumer (Python,
# confluent-kafka in ~/.cache/weir-tools/bench-venv) and the broker share the machine with the
# worker. Results: target/bench/kafka/results.jsonl; logs next to it.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
SIZE=smoke
MODES="map count"
INTERVALS="1s 5s"
RATE="" LAT_EVENTS="" FILL_EVENTS="" KEYS=10000
PARTITIONS=2
PARALLELISM=2
while [ $# -gt 0 ]; do
  case "$1" in
    --size) SIZE="$2"; shift 2;;
    --modes) MODES="$2"; shift 2;;
    --intervals) INTERVALS="$2"; shift 2;;
    --rate) RATE="$2"; shift 2;;
    --latency-events) LAT_EVENTS="$2"; shift 2;;
    --fill-events) FILL_EVENTS="$2"; shift 2;;
    --keys) KEYS="$2"; shift 2;;
    -h|--help) sed -n '2,21p' "$0"; exit 0;;
    *) echo "bench-kafka: unknown argument $1" >&2; exit 2;;
  esac
done
case "$SIZE" in
  smoke) : "${RATE:=2000}" "${LAT_EVENTS:=8000}" "${FILL_EVENTS:=50000}";;
  full) : "${RATE:=10000}" "${LAT_EVENTS:=300000}" "${FILL_EVENTS:=2000000}";;
  *) echo "bench-kafka: --size must be smoke or full" >&2; exit 2;;
esac
[ -x /usr/bin/time ] || { echo "bench-kafka: /usr/bin/time missing (Debian: apt-get install time)" >&2; exit 1; }

TOOLS="${WEIR_TOOLS_DIR:-$HOME/.cache/weir-tools}"
BROKER="$("$REPO/scripts/install-kafka-broker.sh" | tail -1)"
VENV="$TOOLS/bench-venv"
if ! "$VENV/bin/python" -c 'import confluent_kafka' 2>/dev/null; then
  echo "==> installing confluent-kafka (Python client, bundles librdkafka) into $VENV" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "confluent-kafka==2.16.1"
fi
PY="$VENV/bin/python"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}"
echo "--- building weir-worker (release) into $CARGO_TARGET_DIR" >&2
(cd "$REPO" && cargo build --release -q --workspace --bins)
WEIR="$CARGO_TARGET_DIR/release/weir-worker"

OUT="$REPO/target/bench/kafka"
rm -rf "$OUT"; mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
CLIENT="$OUT/kclient.py"

cat > "$CLIENT" <<'EOF'
"""Producer / consumer side of scripts/bench-kafka.sh (confluent-kafka)."""
import json, os, sys, threading, time
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

TICK = os.sysconf("SC_CLK_TCK")
PAD = "x" * 32

def cpu_s(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError, ValueError):
        return None

def producer(bootstrap, **extra):
    conf = {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"}
    conf.update(extra)
    return Producer(conf)

def send(p, topic, key, value):
    while True:
        try:
            p.produce(topic, value=value, key=key)
            return
        except BufferError:
            p.poll(0.005)

def record(seq, keys, ts):
    k = seq % keys
    return str(k), f'{{"key":{k},"ts":{ts},"seq":{seq},"v":{seq * 7 % 1000003},"p":"{PAD}"}}'

def create(bootstrap, partitions, topics):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(t, int(partitions), 1) for t in topics], operation_timeout=30)
    for t, f in futures.items():
        f.result(timeout=60)

def fill(bootstrap, topic, count, keys):
    count, keys = int(count), int(keys)
    p = producer(bootstrap, **{"linger.ms": 20, "batch.size": 1000000, "queue.buffering.max.messages": 1000000})
    start = time.time()
    ts = int(start * 1000)
    for seq in range(count):
        k, v = record(seq, keys, ts)
        send(p, topic, k, v)
        if seq % 10000 == 0:
            p.poll(0)
    left = p.flush(120)
    assert left == 0, f"{left} records not acknowledged"
    print(json.dumps({"filled": count, "fill_s": round(time.time() - start, 2)}))

def consumer(bootstrap, topic, partitions):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-reader-{os.getpid()}-{topic}",
                  "enable.auto.commit": False, "isolation.level": "read_committed",
                  "enable.partition.eof": True, "fetch.wait.max.ms": 10, "fetch.min.bytes": 1,
                  "receive.message.max.bytes": 1000000000})  # noida-db ignores fetch.max.bytes
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])  # 0 = from the start
    return c

def pct(sorted_values, p):
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), -(-len(sorted_values) * p // 100)))
    return sorted_values[int(rank) - 1]

def latency(bootstrap, src, dst, partitions, count, rate, keys, pid, timeout):
    count, rate, keys, partitions, timeout = int(count), float(rate), int(keys), int(partitions), float(timeout)
    c = consumer(bootstrap, dst, partitions)
    p = producer(bootstrap, **{"linger.ms": 2})
    produced = {"end": None, "n": 0}
    t0 = time.time()
    cpu0 = cpu_s(pid)

    def produce():
        seq = 0
        while seq < count:
            due = min(count, int((time.time() - t0) * rate) + 1)
            while seq < due:
                ts = int(time.time() * 1000)
                k, v = record(seq, keys, ts)
                send(p, src, k, v)
                seq += 1
            p.poll(0)
            time.sleep(0.002)
        p.flush(60)
        produced["end"] = time.time()
        produced["n"] = seq

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    lat = []
    last = None
    deadline = t0 + count / rate + timeout
    while len(lat) < count and time.time() < deadline:
        batch = c.consume(num_messages=5000, timeout=0.05)
        now = time.time()  # when the batch became visible here, before parsing it
        for m in batch:
            if m.error():
                if m.error().code() != KafkaError._PARTITION_EOF:
                    raise SystemExit(f"consume {dst}: {m.error()}")
                continue
            lat.append(now * 1000 - json.loads(m.value())["ts"])
            last = now
    cpu1, t1 = cpu_s(pid), time.time()
    thread.join(5)
    lat.sort()
    window = (last or time.time()) - t0
    out = {"events": count, "outputs_seen": len(lat), "rate": rate,
           "produce_s": round((produced["end"] or time.time()) - t0, 2), "window_s": round(window, 2),
           "consumed_per_s": round(len(lat) / window) if window > 0 else None,
           "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": lat[-1] if lat else None,
           "min_ms": lat[0] if lat else None}
    if cpu0 is not None and cpu1 is not None:
        out["cpu_s"] = round(cpu1 - cpu0, 2)
        out["events_per_cpu_s"] = round(len(lat) / (cpu1 - cpu0)) if cpu1 > cpu0 else None
        out["cores"] = round((cpu1 - cpu0) / (t1 - t0), 2)
    c.close()
    print(json.dumps(out))

def verify(bootstrap, topic, partitions):
    c = consumer(bootstrap, topic, int(partitions))
    n, eof, deadline = 0, set(), time.time() + 120
    while len(eof) < int(partitions) and time.time() < deadline:
        for m in c.consume(num_messages=10000, timeout=0.2):
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
                    continue
                raise SystemExit(f"consume {topic}: {m.error()}")
            n += 1
    c.close()
    print(json.dumps({"outputs": n}))

if __name__ == "__main__":
    {"create": lambda b, parts, *t: create(b, parts, t), "fill": fill, "latency": latency,
     "verify": verify}[sys.argv[1]](*sys.argv[2:])
EOF

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
PORT="$(free_port)"
BOOTSTRAP="127.0.0.1:$PORT"
mkdir -p "$OUT/broker-data"
"$BROKER" start --only kafka --host 127.0.0.1 --kafka-port "$PORT" --data-dir "$OUT/broker-data" \
  > "$OUT/broker.log" 2>&1 < /dev/null &
BROKER_PID=$!
WORKER_PID=""
cleanup() {
  [ -n "$WORKER_PID" ] && kill -9 "$WORKER_PID" 2>/dev/null || true
  kill -9 "$BROKER_PID" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 300); do
  "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2)" 2>/dev/null && break
  kill -0 "$BROKER_PID" 2>/dev/null || { cat "$OUT/broker.log" >&2; echo "bench-kafka: broker died" >&2; exit 1; }
  sleep 0.05
done
echo "--- broker noida-db on $BOOTSTRAP (pid $BROKER_PID)" >&2

# job_doc FILE ID MODE INPUT_TOPIC OUTPUT_TOPIC BOUNDED INTERVAL
job_doc() {
  cat > "$1" <<EOF
job:
  name: kafka-bench
  args:
    mode: $3
    input: {kafka: {topics: [$4], bounded: $6, partitionDiscoveryInterval: 0s}}
    output: {kafka: {topic: $5}}
jobId: $2
parallelism: $PARALLELISM
checkpointing:
  interval: $7
  storage: file://$(dirname "$1")/checkpoints
  retained: 2
  timeout: 10m
restartStrategy: {type: none}
restore: none
# noida-db ignores the fetch size limits (fetch.max.bytes, max.partition.fetch.bytes): it answers
# a fetch with all it holds past the offsets asked for, and librdkafka refuses a response over
# receive.message.max.bytes (default 100 MB, ~900k records here).
kafka:
  bootstrapServers: '$BOOTSTRAP'
  properties: {receive.message.max.bytes: '1000000000'}
EOF
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

FILL_TOPIC=fill
T0=$(date +%s)
"$PY" "$CLIENT" create "$BOOTSTRAP" "$PARTITIONS" "$FILL_TOPIC"
echo "--- filling $FILL_TOPIC with $FILL_EVENTS records ($KEYS keys)" >&2
FILLED="$("$PY" "$CLIENT" fill "$BOOTSTRAP" "$FILL_TOPIC" "$FILL_EVENTS" "$KEYS")"
echo "    $FILLED" >&2

for mode in $MODES; do
  for iv in $INTERVALS; do
    # Latency under a fixed load.
    name="$mode-$iv-latency"; work="$OUT/$name"; mkdir -p "$work"
    "$PY" "$CLIENT" create "$BOOTSTRAP" "$PARTITIONS" "in-$name" "out-$name"
    job_doc "$work/job.yaml" "kb-$name" "$mode" "in-$name" "out-$name" false "$iv"
    load="$(loadavg)"
    echo "--- $name: $LAT_EVENTS records at $RATE/s (load average before: $load)" >&2
    "$WEIR" local --job "$work/job.yaml" --work-dir "$work/work" > "$work/stdout" 2> "$OUT/$name.log" &
    WORKER_PID=$!
    for _ in $(seq 600); do
      grep -q 'checkpoint completed' "$OUT/$name.log" && break
      kill -0 "$WORKER_PID" 2>/dev/null || { tail -20 "$OUT/$name.log" >&2; echo "bench-kafka: $name died" >&2; exit 1; }
      sleep 0.05
    done
    res="$("$PY" "$CLIENT" latency "$BOOTSTRAP" "in-$name" "out-$name" "$PARTITIONS" "$LAT_EVENTS" "$RATE" "$KEYS" "$WORKER_PID" 30)"
    kill -TERM "$WORKER_PID" 2>/dev/null || true
    wait "$WORKER_PID" 2>/dev/null || true
    WORKER_PID=""
    rm -rf "$work/work" "$work/checkpoints"
    echo "    $res" >&2
    "$PY" -c 'import json, sys; r = json.loads(sys.argv[1]); r.update(name=sys.argv[2], mode=sys.argv[3], interval=sys.argv[4], kind="latency", load_avg_before=sys.argv[5]); print(json.dumps(r))' \
      "$res" "$name" "$mode" "$iv" "$load" >> "$RESULTS"

    # Throughput from the pre-filled topic.
    name="$mode-$iv-throughput"; work="$OUT/$name"; mkdir -p "$work"
    "$PY" "$CLIENT" create "$BOOTSTRAP" "$PARTITIONS" "out-$name"
    job_doc "$work/job.yaml" "kb-$name" "$mode" "$FILL_TOPIC" "out-$name" true "$iv"
    load="$(loadavg)"
    echo "--- $name: $FILL_EVENTS pre-filled records (load average before: $load)" >&2
    /usr/bin/time -f '%U %S %e %M' -o "$work/time" \
      "$WEIR" local --job "$work/job.yaml" --work-dir "$work/work" > "$work/stdout" 2> "$OUT/$name.log" \
      || { tail -20 "$OUT/$name.log" >&2; echo "bench-kafka: $name failed" >&2; exit 1; }
    rm -rf "$work/work" "$work/checkpoints"
    verified="$("$PY" "$CLIENT" verify "$BOOTSTRAP" "out-$name" "$PARTITIONS")"
    "$PY" - "$work" "$name" "$mode" "$iv" "$load" "$FILL_EVENTS" "$verified" >> "$RESULTS" <<'EOF'
import json, sys
work, name, mode, iv, load, events, verified = sys.argv[1:8]
events = int(events)
job = [json.loads(l) for l in open(work + "/stdout") if l.startswith("{")][-1]
user, sys_, wall, rss = open(work + "/time").read().split()[-4:]
cpu = float(user) + float(sys_)
r = dict(name=name, mode=mode, interval=iv, kind="throughput", load_avg_before=load, events=events,
         outputs=json.loads(verified)["outputs"], user_s=float(user), sys_s=float(sys_), cpu_s=round(cpu, 2),
         process_wall_s=float(wall), job_wall_s=round(job["wall_s"], 2), max_rss_kb=int(rss),
         events_per_s=round(events / job["wall_s"]), events_per_cpu_s=round(events / cpu),
         checkpoints=job["checkpoints"])
print(json.dumps(r))
EOF
    echo "    $(tail -1 "$RESULTS")" >&2
  done
done

"$PY" - "$RESULTS" "$SIZE" "$RATE" "$(( $(date +%s) - T0 ))" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
size, rate, took = sys.argv[2], sys.argv[3], sys.argv[4]
print(f"\nWeir Kafka -> Kafka, size {size}, parallelism 2, exactly-once sink, 2 partitions per topic ({took} s)")
f = lambda v, d=0: "-" if v is None else f"{v:,.{d}f}"
print("\nthroughput (pre-filled topic, bounded source; CPU = whole weir-worker process)")
hdr = f"{'mode':<7}{'ckpt':>6}{'events':>11}{'outputs':>11}{'job s':>8}{'CPU s':>8}{'events/s':>11}{'ev/CPU-s':>11}{'ckpts':>7}{'ckpt p50 ms':>13}  load"
print(hdr); print("-" * len(hdr))
for r in rows:
    if r["kind"] != "throughput":
        continue
    cp = r["checkpoints"]
    print(f"{r['mode']:<7}{r['interval']:>6}{r['events']:>11,}{r['outputs']:>11,}{r['job_wall_s']:>8.1f}{r['cpu_s']:>8.1f}"
          f"{r['events_per_s']:>11,}{r['events_per_cpu_s']:>11,}{cp['completed']:>7}{f(cp.get('duration_ms_p50')):>13}  {r['load_avg_before']}")
print(f"\nlatency (produce -> visible to read_committed) at a fixed {rate} events/s; CPU of weir-worker over the run")
hdr = f"{'mode':<7}{'ckpt':>6}{'events':>10}{'seen':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'CPU s':>8}{'cores':>7}{'ev/CPU-s':>11}  load"
print(hdr); print("-" * len(hdr))
for r in rows:
    if r["kind"] != "latency":
        continue
    print(f"{r['mode']:<7}{r['interval']:>6}{r['events']:>10,}{r['outputs_seen']:>10,}{f(r['p50_ms']):>9}{f(r['p99_ms']):>9}"
          f"{f(r['max_ms']):>9}{f(r.get('cpu_s'), 1):>8}{f(r.get('cores'), 2):>7}{f(r.get('events_per_cpu_s')):>11}  {r['load_avg_before']}")
bad = [r["name"] for r in rows if r.get("outputs", r.get("outputs_seen")) != r["events"]]
if bad:
    print(f"\nWARNING: output count differs from input count in {', '.join(bad)}")
EOF
