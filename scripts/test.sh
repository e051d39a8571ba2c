#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script).
# Fetches the demo model and installs Prometheus (Debian package; the metrics test scrapes the
# server with it) if they are missing, then: rustfmt, clippy (warnings are errors), the tests, and a
# 2-minute soak of the server (scripts/soak.sh, on the binary the tests built).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/fetch_demo_model.sh
./scripts/install_prometheus.sh
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace
XBENCH=./target/debug/xbench ./scripts/soak.sh 120
