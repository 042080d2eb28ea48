#!/usr/bin/env python3
"""The cost of mutual TLS on the distributed runtime: events per CPU-second of a JobManager and
two TaskManagers (one slot each, parallelism 2, keyed exchange across them) with plain TCP and
with mutual TLS, next to the same job in local mode (one process, parallelism 2).

    scripts/bench-tls.py [--runs 3] [--count-events 10000000] [--q5-events 5000000]

Workloads: `count` (keyed running count, 100,000 keys) and `q5` (Nexmark hot items), from the
built-in generator, as in scripts/bench.sh. CPU is user + system time of every process of a
run (read by /usr/bin/time), so the JobManager's share and the TLS work on both sides count.
Certificates: a CA and one peer certificate for `weir-peer` made with openssl, as the operator
makes them. Prints one line per run and a table of medians; raw results go to
target/bench/tls.json.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/weir-target"))
WEIR = os.path.join(TARGET, "release", "weir-worker")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def certificates(work):
    """A CA and a peer certificate it signed, PEM files; returns the worker's TLS environment."""
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=work, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=weir bench CA",
            "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext", "keyUsage=critical,keyCertSign")
    openssl("req", *ec, "-keyout", "peer.key", "-out", "peer.csr", "-subj", "/CN=weir bench peer")
    with open(os.path.join(work, "peer.ext"), "w") as f:
        f.write("subjectAltName=DNS:weir-peer\nextendedKeyUsage=serverAuth,clientAuth\n")
    openssl("x509", "-req", "-in", "peer.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "peer.pem", "-days", "2", "-extfile", "peer.ext")
    return {"WEIR_TLS_CA": os.path.join(work, "ca.pem"),
            "WEIR_TLS_CERT": os.path.join(work, "peer.pem"),
            "WEIR_TLS_KEY": os.path.join(work, "peer.key")}


def job_doc(path, args):
    with open(path, "w") as f:
        f.write(f"""job:
  name: nexmark
  args: {{{args}}}
parallelism: 2
checkpointing:
  interval: 5s
  storage: file://{os.path.dirname(path)}/checkpoints
  retained: 2
  timeout: 10m
restartStrategy: {{type: none}}
restore: none
state: {{cacheBytes: 268435456}}
""")


def timed(args, log, env, time_file):
    return subprocess.Popen(["/usr/bin/time", "-f", "%U %S %e", "-o", time_file, WEIR, *args],
                            stdout=log, stderr=subprocess.STDOUT, env=env)


def cpu_of(time_file):
    user, system, wall = open(time_file).read().split()[-3:]
    return float(user) + float(system), float(wall)


def run(mode, workload, args, events, work, tls_env):
    run_dir = tempfile.mkdtemp(prefix=f"{workload}-{mode}-", dir=work)
    doc = os.path.join(run_dir, "job.yaml")
    job_doc(doc, args)
    env = dict(os.environ, WEIR_LOG="warn")
    if mode == "cluster-tls":
        env.update(tls_env)
    started = time.time()
    if mode == "local":
        log = open(os.path.join(run_dir, "local.log"), "w")
        p = timed(["local", "--job", doc, "--work-dir", os.path.join(run_dir, "work")], log, env,
                  os.path.join(run_dir, "local.time"))
        if p.wait() != 0:
            sys.exit(f"local run failed: {run_dir}/local.log")
        wall = time.time() - started
        cpu, _ = cpu_of(os.path.join(run_dir, "local.time"))
    else:
        rpc = free_port()
        jm_log = open(os.path.join(run_dir, "jobmanager.log"), "w")
        jm = timed(["jobmanager", "--job", doc, "--rpc-addr", f"127.0.0.1:{rpc}",
                    "--rest-addr", f"127.0.0.1:{free_port()}", "--exit-when-done"],
                   jm_log, env, os.path.join(run_dir, "jm.time"))
        tms = []
        for i in range(2):
            tm_log = open(os.path.join(run_dir, f"tm{i}.log"), "w")
            tms.append(timed(["taskmanager", "--jobmanager", f"127.0.0.1:{rpc}", "--slots", "1",
                              "--data-addr", "127.0.0.1:0",
                              "--work-dir", os.path.join(run_dir, f"work{i}")],
                             tm_log, env, os.path.join(run_dir, f"tm{i}.time")))
        if jm.wait() != 0:
            for tm in tms:
                tm.kill()
            sys.exit(f"cluster run failed: {run_dir}/jobmanager.log")
        wall = time.time() - started
        for tm in tms:
            # /usr/bin/time's child is the worker: stop it, time then reports its CPU.
            children = subprocess.run(["pgrep", "-P", str(tm.pid)], capture_output=True,
                                      text=True).stdout.split()
            for child in children:
                os.kill(int(child), signal.SIGTERM)
            tm.wait(timeout=60)
        cpu = cpu_of(os.path.join(run_dir, "jm.time"))[0]
        cpu += sum(cpu_of(os.path.join(run_dir, f"tm{i}.time"))[0] for i in range(2))
        if mode == "cluster-tls":
            logs = "".join(open(os.path.join(run_dir, f)).read()
                           for f in ("jobmanager.log", "tm0.log", "tm1.log"))
            if "refused a connection" in logs:
                sys.exit(f"a TLS handshake failed in {run_dir}")
    shutil.rmtree(run_dir, ignore_errors=True)
    result = dict(workload=workload, mode=mode, events=events, cpu_s=round(cpu, 2),
                  wall_s=round(wall, 2), events_per_cpu_s=round(events / cpu))
    print(json.dumps(result), flush=True)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count-events", type=int, default=10_000_000)
    parser.add_argument("--q5-events", type=int, default=5_000_000)
    options = parser.parse_args()
    if not os.path.exists(WEIR):
        sys.exit(f"{WEIR} missing: cargo build --release --workspace --bin weir-worker")
    work = tempfile.mkdtemp(prefix="weir-bench-tls-")
    tls_env = certificates(work)
    workloads = [
        ("count", f"query: count, events: {options.count_events}, keys: 100000",
         options.count_events),
        ("q5", f"query: q5, events: {options.q5_events}", options.q5_events),
    ]
    modes = ["local", "cluster-plain", "cluster-tls"]
    results = []
    for _ in range(options.runs):
        # Interleaved, so a noisy minute hits every mode alike.
        for name, args, events in workloads:
            for mode in modes:
                results.append(run(mode, name, args, events, work, tls_env))
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(ROOT, "target", "bench"), exist_ok=True)
    with open(os.path.join(ROOT, "target", "bench", "tls.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nmedian of {options.runs} runs, events per CPU-second (all processes):")
    print(f"{'workload':10} {'local':>12} {'cluster':>12} {'cluster+TLS':>12} "
          f"{'cluster/local':>14} {'TLS/local':>10} {'TLS/plain':>10}")
    for name, _, _ in workloads:
        median = {m: statistics.median(r["events_per_cpu_s"] for r in results
                                       if r["workload"] == name and r["mode"] == m)
                  for m in modes}
        local, plain, tls = median["local"], median["cluster-plain"], median["cluster-tls"]
        print(f"{name:10} {local:>12,.0f} {plain:>12,.0f} {tls:>12,.0f} "
              f"{plain / local:>13.0%} {tls / local:>10.0%} {tls / plain:>10.0%}")


if __name__ == "__main__":
    main()
