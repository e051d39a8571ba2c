#!/usr/bin/env bash
# The original results table's rows for this machine, with `xbench bench` (release build):
# each stage, 1 vs 2 tokenizer workers, parallelism off/on, 1 vs 2 model workers at the same core
# budget. Prints one markdown table. Takes about 8 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked >&2
X=./target/release/xbench
PPR="${PPR:-32}"
common=(--pairs-per-request "$PPR" --warmup 2)
run() { "$X" bench "${common[@]}" "$@" 2>/dev/null; }
{
  run --stage tokenize --tokenizer-workers 1 --parallelism false --concurrency 4 --duration 10 --min-requests 400
  run --stage tokenize --tokenizer-workers 1 --parallelism true --concurrency 4 --duration 10 --min-requests 400 | tail -n 1
  run --stage tokenize --tokenizer-workers 2 --parallelism true --concurrency 4 --duration 10 --min-requests 400 | tail -n 1
  run --stage infer --model-workers 1 --concurrency 2 --duration 10 --min-requests 12 | tail -n 1
  run --stage infer --model-workers 2 --concurrency 2 --duration 10 --min-requests 12 | tail -n 1
  run --stage full --tokenizer-workers 1 --model-workers 1 --parallelism false --concurrency 2 --duration 10 --min-requests 12 | tail -n 1
  run --stage full --tokenizer-workers 1 --model-workers 1 --parallelism true --concurrency 2 --duration 10 --min-requests 12 | tail -n 1
  run --stage full --tokenizer-workers 2 --model-workers 2 --parallelism true --concurrency 2 --duration 10 --min-requests 12 | tail -n 1
}
