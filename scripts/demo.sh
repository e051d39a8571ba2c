#!/usr/bin/env bash
# xbench end to end on a fresh machine: fetch the demo model, build xbench (release), and score the
# bundled sample pairs with it. Scores go to experiments/results/demo_scores.jsonl; the measured
# throughput is logged on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/fetch_demo_model.sh
cargo build --release --locked
mkdir -p experiments/results
./target/release/xbench score \
  --model models/demo-minilm-l6 \
  --input data/sample_pairs.jsonl \
  --output experiments/results/demo_scores.jsonl \
  --batch-size 32
echo "first scores (experiments/results/demo_scores.jsonl):"
head -n 3 experiments/results/demo_scores.jsonl
