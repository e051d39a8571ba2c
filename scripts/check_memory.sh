#!/usr/bin/env bash
# Memory stays bounded under load: runs the full pipeline (release build) for DURATION seconds
# (default 60) under a closed loop, sampling its RSS every 0.2 s (times in ms).
#
# The instantaneous RSS swings by hundreds of MB with the padded batch in flight (its activations
# and attention scores are freed after every forward pass), so single samples say little. The check
# compares the resting RSS (the minimum, i.e. between batches) over 5-15 s with the resting RSS
# over the last 10 s: a leak raises the floor. It fails if the late floor is more than 10% above the
# early one. Peaks are printed too.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-60}"
(( DURATION >= 30 )) || { echo "DURATION must be at least 30 seconds" >&2; exit 2; }
cargo build --release --locked >&2
./target/release/xbench bench --stage full --tokenizer-workers 2 --model-workers 1 \
  --pairs-per-request 8 --concurrency 4 --warmup 0 --min-requests 1 --duration "$DURATION" --max-duration "$DURATION" \
  > /tmp/xbench-check-memory.out 2>/dev/null &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
samples=$(mktemp)
start=$(date +%s%N)
while kill -0 "$pid" 2>/dev/null; do
  kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
  [[ -n "$kb" ]] && echo "$(( ($(date +%s%N) - start) / 1000000 )) $kb" >> "$samples"
  sleep 0.2
done
wait "$pid" || true
trap - EXIT
awk -v d="$((DURATION * 1000))" '
  $1 >= 5000 && $1 < 15000   { if (!e || $2 < emin) emin = $2; if ($2 > emax) emax = $2; e = 1 }
  $1 >= d - 10000 && $1 < d { if (!l || $2 < lmin) lmin = $2; if ($2 > lmax) lmax = $2; l = 1 }
  END {
    if (!e || !l) { print "FAIL: too few RSS samples"; exit 1 }
    printf "resting RSS 5-15 s: %d kB (peak %d kB); last 10 s: %d kB (peak %d kB); growth %.1f%%\n",
      emin, emax, lmin, lmax, (lmin - emin) * 100 / emin
    if (lmin > emin * 1.10) { print "FAIL: resting RSS grew by more than 10%"; exit 1 }
    print "ok: resting RSS within 10%"
  }' "$samples"
rm -f "$samples"
tail -n 1 /tmp/xbench-check-memory.out
