#!/usr/bin/env bash
# xbench's throughput "at batch B" as the performance issue defines it: B pairs per request,
# max_batch_size B, concurrency 1, one model instance with 2 threads, the full pipeline, in process
# (release build). Prints pairs/s and padding efficiency for B = 8, 32, 128 (or the B given), each
# over a 20 s window of at least 3 requests, on data/pairs.jsonl (or $INPUT).
#   ./scripts/batch_table.sh [B ...]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked >&2
INPUT="${INPUT:-data/pairs.jsonl}"
sizes=("$@")
(( ${#sizes[@]} )) || sizes=(8 32 128)
echo "| B | pairs/s | p50 ms | requests | padding efficiency |"
echo "|---|---|---|---|---|"
for b in "${sizes[@]}"; do
  ./target/release/xbench bench --stage full --pairs-per-request "$b" --max-batch-size "$b" \
    --max-batch-tokens 1000000 --concurrency 1 --model-workers 1 --threads 2 --warmup 1 \
    --duration 20 --min-requests 3 --input "$INPUT" --json 2>/dev/null |
    python3 -c '
import json, sys
r = json.load(sys.stdin)
b, qps, p50, n, eff = r["pairs_per_request"], r["qps"], r["latency_ms"]["p50"], r["requests"], r["padding_efficiency"]
print(f"| {b} | {qps:.1f} | {p50:.0f} | {n} | {eff:.0%} |")'
done
