#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script).
# Fetches the demo model and every crate in Cargo.lock (for every platform: cargo deny reads them
# all, offline), installs Prometheus (Debian package; the metrics test scrapes the server with it),
# Cohere's Python SDK (PyPI, into .venv-clients; a test drives the server with it) and cargo-deny
# (from crates.io) if they are missing, then: rustfmt, clippy
# (warnings are errors), cargo deny (bans, licenses, sources; offline), the tests (the property
# tests of tests/fuzz.rs among them), and a 2-minute soak of the server (scripts/soak.sh, on the
# binary the tests built).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/fetch_demo_model.sh
cargo fetch --locked
./scripts/install_prometheus.sh
./scripts/install_sdk_clients.sh
if ! cargo deny --version >/dev/null 2>&1; then
  cargo install cargo-deny@0.20.2 --locked
fi
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo deny --offline check --hide-inclusion-graph bans licenses sources
cargo test --locked --workspace
XBENCH=./target/debug/xbench ./scripts/soak.sh 120
