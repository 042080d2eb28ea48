#!/usr/bin/env python3
"""Generates trade snapshots for the `minute-bars` job: JSON lines with cumulative day totals
per security, in event-time order with up to `--jitter-ms` of disorder.

    scripts/gen-trades.py --trades 3000000 --securities 500 --files 4 --out /tmp/trades
"""
import argparse
import json
import os
import random

p = argparse.ArgumentParser()
p.add_argument("--trades", type=int, default=2000)
p.add_argument("--securities", type=int, default=5)
p.add_argument("--files", type=int, default=1)
p.add_argument("--jitter-ms", type=int, default=1000)
p.add_argument("--start-ms", type=int, default=1604280600000)  # 2020-11-02 09:30 +08:00
p.add_argument("--step-ms", type=int, default=20, help="mean event-time step between trades")
p.add_argument("--seed", type=int, default=7)
p.add_argument("--out", required=True)
a = p.parse_args()

rng = random.Random(a.seed)
os.makedirs(a.out, exist_ok=True)
files = [open(os.path.join(a.out, f"trades-{i:02}.jsonl"), "w") for i in range(a.files)]
codes = [f"{600000 + i:06}" for i in range(a.securities)]
state = {}
for c in codes:
    pre = round(rng.uniform(5, 50), 2)
    state[c] = {"pre": pre, "open": pre, "high": pre, "low": pre, "vol": 0, "amt": 0}
t = a.start_ms
for n in range(a.trades):
    t += rng.randint(0, 2 * a.step_ms)
    # The file is chosen by security, so each security's snapshots stay in order per file;
    # event times still jitter by up to jitter-ms.
    code = codes[rng.randrange(len(codes))]
    s = state[code]
    price = max(0.01, round(s["pre"] * (1 + rng.uniform(-0.02, 0.02)), 2))
    vol = rng.randint(1, 100) * 100
    s["vol"] += vol
    s["amt"] += int(round(price * 100)) * vol
    s["high"] = max(s["high"], price)
    s["low"] = min(s["low"], price)
    rec = {
        "secCode": code,
        "secName": f"SEC{code}",
        "eventTime": t - rng.randint(0, a.jitter_ms),
        "preClosePrice": s["pre"],
        "openPrice": s["open"],
        "highPrice": s["high"],
        "lowPrice": s["low"],
        "tradePrice": price,
        "tradeVolDay": s["vol"],
        "tradeAmtDay": s["amt"],
    }
    files[int(code) % a.files].write(json.dumps(rec, separators=(",", ":")) + "\n")
for f in files:
    f.close()
