#!/usr/bin/env bash
# Before/after check of a change that must not change behaviour or speed: builds an older revision
# (release, in a worktree and target directory of its own under /tmp) beside this tree's release
# build, then
#   1. `xbench score` on $SCORE_INPUT (default data/pairs.jsonl) with every precision each backend
#      runs: byte-identical output (the old revision is asked with --kernels if it predates
#      --backend). On a CPU without AVX-512, fp16 and bf16 run portable loops that take minutes per
#      hundred pairs: give a shorter file there (SCORE_INPUT=data/sample_pairs.jsonl);
#   2. `xbench bench` at 8, 32 and 128 pairs per request, the two binaries interleaved round after
#      round; prints each round and the median pairs/s of each with its spread (min-max).
# Usage: scripts/compare_builds.sh OLD_REV [ROUNDS] [DURATION_S]
# Needs the demo model (scripts/fetch_demo_model.sh). Run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."

OLD_REV=${1:?usage: scripts/compare_builds.sh OLD_REV [ROUNDS] [DURATION_S]}
ROUNDS=${2:-3}
DURATION=${3:-6}
OLD_TREE=/tmp/xbench-compare-$(git rev-parse --short "$OLD_REV")
OLD_TARGET=/tmp/xbench-compare-target  # shared by every old revision: only xbench itself rebuilds
SCORE_INPUT=${SCORE_INPUT:-data/pairs.jsonl}
MODEL=models/demo-minilm-l6

if [ ! -d "$OLD_TREE" ]; then
  git worktree add --detach "$OLD_TREE" "$OLD_REV" >/dev/null
fi
(cd "$OLD_TREE" && CARGO_TARGET_DIR="$OLD_TARGET" cargo build --release --locked --quiet)
cargo build --release --locked --quiet
OLD="$OLD_TARGET/release/xbench"
NEW=./target/release/xbench
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
echo "old: $OLD_REV ($(git rev-parse --short "$OLD_REV")), new: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' + changes')"

# The flag that picks the backend: --backend, or --kernels before it existed.
backend_flag() {
  if "$1" score --help | grep -q -- '--backend'; then echo --backend; else echo --kernels; fi
}
OLD_FLAG=$(backend_flag "$OLD")
NEW_FLAG=$(backend_flag "$NEW")

echo "== xbench score, $SCORE_INPUT =="
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
for backend in fused candle; do
  for precision in fp32 fp16 bf16 int8 int4; do
    if [ "$backend" = candle ] && { [ "$precision" = int8 ] || [ "$precision" = int4 ]; }; then
      continue
    fi
    "$OLD" score --model "$MODEL" --input "$SCORE_INPUT" --quantization "$precision" \
      "$OLD_FLAG" "$backend" >"$out/old" 2>/dev/null
    "$NEW" score --model "$MODEL" --input "$SCORE_INPUT" --quantization "$precision" \
      "$NEW_FLAG" "$backend" >"$out/new" 2>/dev/null
    if cmp -s "$out/old" "$out/new"; then
      echo "$backend $precision: identical ($(wc -l <"$out/new") lines)"
    else
      echo "$backend $precision: DIFFERENT"
      status=1
    fi
  done
done

echo "== xbench bench (full stage, in process), pairs/s, $ROUNDS rounds of $DURATION s, interleaved =="
bench() {
  "$1" bench --model "$MODEL" --pairs-per-request "$2" --duration "$DURATION" --min-requests 4 \
    --warmup 2 --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["qps"])'
}
for ppr in 8 32 128; do
  olds=()
  news=()
  for round in $(seq "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then
      o=$(bench "$OLD" "$ppr"); n=$(bench "$NEW" "$ppr")
    else
      n=$(bench "$NEW" "$ppr"); o=$(bench "$OLD" "$ppr")
    fi
    olds+=("$o"); news+=("$n")
    echo "  $ppr pairs/request, round $round: old $o, new $n"
  done
  python3 - "$ppr" "${olds[*]}" "${news[*]}" <<'EOF'
import statistics, sys
ppr, old, new = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
mo, mn = statistics.median(old), statistics.median(new)
print(f"{ppr} pairs/request: old {mo:.1f} ({min(old):.1f}-{max(old):.1f}), new {mn:.1f} ({min(new):.1f}-{max(new):.1f}) pairs/s; new/old {mn / mo:.3f}")
EOF
done
exit $status
