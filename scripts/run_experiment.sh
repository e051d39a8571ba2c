#!/usr/bin/env bash
# Runs one experiment of conf/experiment/ end to end, as the original README did:
#   ./scripts/run_experiment.sh 01_tokenizer_only [overrides...]
# Fetches the demo model if missing, builds xbench in release if needed, runs every cell and writes
# experiments/results/NAME_results.{md,json,csv}.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 1 ]]; then
  echo "usage: $0 EXPERIMENT [overrides...]; experiments:" >&2
  ls conf/experiment | sed 's/\.yaml$//' >&2
  exit 2
fi
./scripts/fetch_demo_model.sh
cargo build --release --locked
./target/release/xbench run "$@"
