#!/usr/bin/env bash
# The fused kernels' speed per SIMD level × precision on this CPU: `xbench bench` (full stage, in
# process, the demo model, data/pairs.jsonl, PAIRS pairs per request, batches of PAIRS) at every
# level this CPU has (XBENCH_SIMD=avx512|avx2|portable) and every precision (fp32, fp16, bf16,
# int8, int4). Every cell runs once per round, in an order rotated from round to round, so that
# the machine's drifts fall on every cell alike; prints each round, then one table: the median
# pairs/s of each cell with its spread (min-max), its ratio to the same level's fp32 (medians), the
# kernel each product ran (`GET /info`'s names), and the portable level's fp32 against the best
# level's. Writes experiments/results/kernel_table.json.
# Usage: [LEVELS="avx2 portable"] [PAIRS=32] scripts/kernel_table.sh [ROUNDS] [DURATION_S]
# (defaults: every level this CPU has, 5 rounds of 8 s)
# Needs the demo model (scripts/fetch_demo_model.sh); builds the release binary. Run it on a quiet
# machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
DURATION=${2:-8}
PAIRS=${PAIRS:-32}
cargo build --release --locked --quiet
levels="avx2 portable"
if grep -qw avx512f /proc/cpuinfo && grep -qw avx512bw /proc/cpuinfo; then
  levels="avx512 $levels"
fi
levels=${LEVELS:-$levels}  # e.g. LEVELS="avx2" measures that level alone
python3 - "$ROUNDS" "$DURATION" "$PAIRS" $levels <<'PY'
import json, os, statistics, subprocess, sys

rounds, duration, pairs = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
levels = sys.argv[4:]
precisions = ["fp32", "fp16", "bf16", "int8", "int4"]
cells = [(l, p) for l in levels for p in precisions]
cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
print(f"CPU: {cpu}, {os.cpu_count()} cores; {pairs} pairs per request; {rounds} rounds of {duration:g} s")

def bench(level, precision):
    env = dict(os.environ, XBENCH_SIMD=level)
    out = subprocess.run(
        ["./target/release/xbench", "bench", "--quantization", precision,
         "--pairs-per-request", str(pairs), "--max-batch-size", str(pairs),
         "--duration", str(duration), "--min-requests", "4", "--warmup", "2", "--json"],
        env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)["qps"]

def kernels(level):
    env = dict(os.environ, XBENCH_SIMD=level)
    out = subprocess.run(["./target/release/xbench", "kernels", "--json"], env=env,
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)

names = {l: kernels(l) for l in levels}
runs = {c: [] for c in cells}
for r in range(rounds):
    shift = (r * 7) % len(cells)
    for c in cells[shift:] + cells[:shift]:
        runs[c].append(bench(*c))
    print(f"round {r + 1}: " + ", ".join(f"{l}/{p} {runs[(l, p)][-1]:.1f}" for l, p in cells), flush=True)

med = {c: statistics.median(v) for c, v in runs.items()}
best = levels[0]
print()
print("| level | precision | kernel | pairs/s (median, min-max) | × level's fp32 |")
print("|---|---|---|---|---|")
for l, p in cells:
    v = runs[(l, p)]
    print(f"| {l} | {p} | `{names[l]['products'][p]}` | {med[(l, p)]:.1f} ({min(v):.1f}-{max(v):.1f}) "
          f"| {med[(l, p)] / med[(l, 'fp32')]:.2f}× |")
if "portable" in levels and best != "portable":
    print(f"\nportable fp32 / {best} fp32: {med[('portable', 'fp32')] / med[(best, 'fp32')]:.2f}×")
os.makedirs("experiments/results", exist_ok=True)
with open("experiments/results/kernel_table.json", "w") as f:
    json.dump({"cpu": cpu, "cores": os.cpu_count(), "pairs_per_request": pairs, "rounds": rounds,
               "duration_s": duration, "kernels": names,
               "cells": [{"level": l, "precision": p, "pairs_per_s": runs[(l, p)],
                          "median": med[(l, p)]} for l, p in cells]}, f, indent=1)
PY
