#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script).
# Fetches the demo model if it is missing, then: rustfmt, clippy (warnings are errors), the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/fetch_demo_model.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
