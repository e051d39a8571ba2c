#!/usr/bin/env bash
# Runs every experiment of conf/experiment/ in order (xbench sweep all); results go to
# experiments/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch_demo_model.sh
cargo build --release --locked
./target/release/xbench sweep all "$@"
