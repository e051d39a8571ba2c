#!/usr/bin/env bash
# Longer fuzzing runs than CI's property tests (tests/fuzz.rs), with cargo fuzz (libFuzzer +
# AddressSanitizer): ./scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Targets (fuzz/fuzz_targets/): override_parser, config_yaml, rerank_body (both rerank APIs over
# HTTP against a server on a tiny model), jsonl_reader. Default: 300 s each, all four.
# Corpora grow in fuzz/corpus/TARGET (seeded from fuzz/seeds/TARGET); a crash is saved in
# fuzz/artifacts/TARGET/ and the script fails. Turn each crash into a regression test named after
# what it found (tests/fuzz.rs, or the unit tests of the code at fault); `cargo fuzz fmt TARGET
# FILE` prints the input.
#
# Needs cargo-fuzz (installed here from crates.io when missing) and a nightly compiler: the
# nightly toolchain when rustup has one, else the stable one with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${1:-300}"
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=(override_parser config_yaml rerank_body jsonl_reader)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz from crates.io"
  cargo install cargo-fuzz --locked
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  FUZZ=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  FUZZ=(cargo fuzz)
fi

failed=()
for target in "${TARGETS[@]}"; do
  mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
  echo "== $target: ${SECONDS_PER_TARGET} s"
  # The server target keeps a server and its threads for the whole run; nothing else is kept.
  if ! "${FUZZ[@]}" run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
      -max_total_time="$SECONDS_PER_TARGET" -timeout=60 -rss_limit_mb=4096 -print_final_stats=1; then
    failed+=("$target")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz: ${TARGETS[*]} ran ${SECONDS_PER_TARGET} s each with no crash"
