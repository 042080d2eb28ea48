#!/usr/bin/env python3
"""Distributed-runtime figures on this machine: checkpoint duration at parallelism 2 and
recovery time after a TaskManager is SIGKILLed (kill -> records flowing again).

Runs a real JobManager and three TaskManagers (one spare) of the release `weir-worker` on
127.0.0.1, with checkpoints and output on a local s3s-fs server, the `sequence-check` job
at 2 x 20,000 events/s with 1,000 keys, checkpoints every second.

    scripts/bench-cluster.py [--kills 5] [--keys 1000]

Recovery is measured from the SIGKILL until the sum of `weir_records_out_total` of the
surviving TaskManagers grows again after the job is RUNNING on its new attempt. Two cases:
with a spare TaskManager already registered (the runtime's own recovery), and with the
killed TaskManager restarted immediately and no spare (adds process start and
registration, as a Kubernetes pod restart would, minus image and scheduling time).
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/weir-target"))
ACCESS, SECRET = "weir-bench", "weir-bench-secret"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def wait(what, condition, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.01)
    sys.exit(f"timed out waiting for {what}")


class Cluster:
    def __init__(self, work, binary, keys):
        self.work, self.binary = work, binary
        self.procs = []
        s3_port = free_port()
        os.makedirs(f"{work}/s3/weir")
        self.env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{s3_port}",
                        AWS_REGION="us-east-1", AWS_ACCESS_KEY_ID=ACCESS,
                        AWS_SECRET_ACCESS_KEY=SECRET, AWS_EC2_METADATA_DISABLED="true",
                        WEIR_LOG="info")
        s3fs = shutil.which("s3s-fs") or os.path.expanduser("~/.cargo/bin/s3s-fs")
        self.spawn([s3fs, "--host", "127.0.0.1", "--port", str(s3_port), "--access-key", ACCESS,
                    "--secret-key", SECRET, f"{work}/s3"], "s3.log")
        wait("the S3 server", lambda: socket.create_connection(("127.0.0.1", s3_port), 0.2))
        with open(f"{work}/job.yaml", "w") as f:
            f.write(f"""job:
  name: sequence-check
  args: {{keys: {keys}, eventsPerKey: 100000000, eventsPerSecond: 20000, output: 's3://weir/output'}}
jobId: seq
parallelism: 2
checkpointing: {{interval: 1s, storage: 's3://weir/checkpoints', retained: 3}}
restartStrategy: {{type: fixed-delay, attempts: 1000, delay: 100ms}}
s3: {{endpoint: 'http://127.0.0.1:{s3_port}', forcePathStyle: true}}
""")
        self.rpc, self.rest = free_port(), free_port()
        self.spawn([binary, "jobmanager", "--job", f"{work}/job.yaml",
                    "--rpc-addr", f"127.0.0.1:{self.rpc}", "--rest-addr", f"127.0.0.1:{self.rest}"],
                   "jobmanager.log")
        self.tms = {}

    def spawn(self, args, log):
        out = open(f"{self.work}/{log}", "a")
        proc = subprocess.Popen(args, stdout=out, stderr=out, env=self.env)
        self.procs.append(proc)
        return proc

    def start_tm(self, name):
        port = free_port()
        proc = self.spawn([self.binary, "taskmanager", "--jobmanager", f"127.0.0.1:{self.rpc}",
                           "--slots", "1", "--data-addr", "127.0.0.1:0",
                           "--metrics-addr", f"127.0.0.1:{port}",
                           "--work-dir", f"{self.work}/tm-{name}"], f"tm-{name}.log")
        self.tms[name] = (proc, port)
        wait(f"TaskManager {name} metrics", lambda: get(f"http://127.0.0.1:{port}/metrics"))

    def kill_tm(self, name):
        proc, _ = self.tms.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def records_out(self, names=None):
        total = 0
        for name, (_, port) in self.tms.items():
            if names is not None and name not in names:
                continue
            try:
                text = get(f"http://127.0.0.1:{port}/metrics")
            except OSError:
                continue
            total += sum(int(float(v)) for v in
                         re.findall(r"^weir_records_out_total\{[^}]*\} (\S+)", text, re.M))
        return total

    def busy_tm(self):
        """A TaskManager that is running tasks (its record counter moves)."""
        before = {name: self.records_out([name]) for name in self.tms}
        time.sleep(0.3)
        for name in self.tms:
            if self.records_out([name]) > before[name]:
                return name
        sys.exit("no TaskManager is processing")

    def overview(self):
        return json.loads(get(f"http://127.0.0.1:{self.rest}/v1/jobs/seq"))

    def checkpoints(self):
        return json.loads(get(f"http://127.0.0.1:{self.rest}/v1/jobs/seq/checkpoints"))

    def stop(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()


def recover_once(cluster, victim, restart_in_place):
    restarts = cluster.overview()["restarts"]
    t0 = time.monotonic()
    cluster.kill_tm(victim)
    if restart_in_place:
        cluster.start_tm(victim)
    wait("the restart", lambda: cluster.overview()["restarts"] > restarts
         and cluster.overview()["state"] == "RUNNING")
    base = cluster.records_out()
    wait("records flowing again", lambda: cluster.records_out() > base)
    return (time.monotonic() - t0) * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--keys", type=int, default=1000)
    args = parser.parse_args()
    binary = f"{TARGET}/release/weir-worker"
    print("building weir-worker (release)...", flush=True)
    subprocess.run(["cargo", "build", "--release", "-p", "weir", "--bin", "weir-worker"],
                   cwd=ROOT, check=True, env=dict(os.environ, CARGO_TARGET_DIR=TARGET))
    work = tempfile.mkdtemp(prefix="weir-bench-cluster-")
    cluster = Cluster(work, binary, args.keys)
    try:
        for name in ["a", "b", "spare"]:
            cluster.start_tm(name)
        print("waiting for 8 checkpoints at parallelism 2...", flush=True)
        wait("checkpoints", lambda: cluster.checkpoints()["counts"]["completed"] >= 8)
        history = [c for c in cluster.checkpoints()["history"]
                   if c["status"] == "COMPLETED" and not c["savepoint"]]
        durations = sorted(c["durationMs"] for c in history)
        sizes = [c["stateSize"] for c in history]
        print(f"checkpoint duration at parallelism 2 ({len(durations)} checkpoints, "
              f"{args.keys} keys, 2 x 20k events/s): p50 {statistics.median(durations):.0f} ms, "
              f"max {max(durations)} ms, state {statistics.median(sizes) / 1024:.0f} KiB")

        spare_runs, in_place_runs = [], []
        for i in range(args.kills):
            victim = cluster.busy_tm()
            ms = recover_once(cluster, victim, restart_in_place=False)
            spare_runs.append(ms)
            print(f"  kill {i + 1}/{args.kills} with a spare registered: resumed after {ms:.0f} ms",
                  flush=True)
            cluster.start_tm(victim)  # becomes the next spare
            time.sleep(2)
        # Without a spare: only two TaskManagers, the killed one restarts.
        idle = next(n for n in cluster.tms if n != cluster.busy_tm() and n != cluster.busy_tm())
        cluster.kill_tm(idle)
        time.sleep(3)
        for i in range(args.kills):
            victim = cluster.busy_tm()
            ms = recover_once(cluster, victim, restart_in_place=True)
            in_place_runs.append(ms)
            print(f"  kill {i + 1}/{args.kills}, TaskManager restarted in place: resumed after "
                  f"{ms:.0f} ms", flush=True)
            time.sleep(2)
        print(f"recovery, spare registered: median {statistics.median(spare_runs):.0f} ms, "
              f"max {max(spare_runs):.0f} ms")
        print(f"recovery, restart in place:  median {statistics.median(in_place_runs):.0f} ms, "
              f"max {max(in_place_runs):.0f} ms")
    finally:
        cluster.stop()
        print(f"logs: {work}")


if __name__ == "__main__":
    main()
