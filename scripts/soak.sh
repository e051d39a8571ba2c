#!/usr/bin/env bash
# Soak test: `xbench serve` (conf/config.yaml, 127.0.0.1) under open-loop Poisson load at 80% of its
# capacity (measured first: 4 clients, closed loop) for DURATION seconds (default 1800), in 10 s
# windows. Each window samples the server's resting RSS (the minimum between batches), its open file
# descriptors, p99 and errors, and prints a row. After the first WARMUP seconds (default 60) it fails
#   - if the resting RSS of the last window is more than 10% above the first measured window's,
#   - if the open fds grew at all,
#   - if p99 more than doubled (median of the last 3 windows against the first 3),
#   - if any request was lost: every request sent must be answered, or refused with a documented
#     status (429 overloaded, 503 unavailable / deadline_exceeded).
#   ./scripts/soak.sh [DURATION]     XBENCH=path/to/xbench (default: release build), PORT (18090),
#                                    PAIRS per request (4), LOAD (0.8 of capacity), WARMUP (60)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-1800}"
WARMUP="${WARMUP:-60}"
PORT="${PORT:-18090}"
PAIRS="${PAIRS:-4}"
LOAD="${LOAD:-0.8}"
(( DURATION >= WARMUP + 30 )) || { echo "DURATION must be at least WARMUP + 30 seconds" >&2; exit 2; }
./scripts/fetch_demo_model.sh >&2
if [[ -z "${XBENCH:-}" ]]; then
  cargo build --release --locked >&2
  XBENCH=./target/release/xbench
fi
URL="http://127.0.0.1:$PORT"
out="$(mktemp -d)"

"$XBENCH" serve server.port="$PORT" > "$out/serve.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$out"' EXIT
until curl -fsS "$URL/health" >/dev/null 2>&1; do
  kill -0 "$pid" 2>/dev/null || { cat "$out/serve.log" >&2; echo "xbench serve exited" >&2; exit 1; }
  sleep 0.2
done
# Resident set size every 0.2 s: "epoch_ms kB".
( while kill -0 "$pid" 2>/dev/null; do
    kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    [[ -n "$kb" ]] && echo "$(date +%s%3N) $kb"
    sleep 0.2
  done ) > "$out/rss" &
sampler=$!

capacity=$("$XBENCH" bench --target "$URL" --pairs-per-request "$PAIRS" --concurrency 4 --warmup 4 \
  --duration 10 --min-requests 20 --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["rps"])')
rate=$(python3 -c "print(round($capacity * $LOAD, 2))")
echo "capacity: $capacity requests/s of $PAIRS pairs; offered load: $rate requests/s (Poisson, ${LOAD} of capacity), $DURATION s in 10 s windows, warm-up $WARMUP s" >&2

begin=$(date +%s%3N)
echo "$begin" > "$out/begin"
windows=$(( DURATION / 10 ))
for (( w = 0; w < windows; w++ )); do
  sleep 0.3   # connections of the last window closed
  fds=$(ls "/proc/$pid/fd" | wc -l)
  from=$(date +%s%3N)
  "$XBENCH" bench --target "$URL" --pairs-per-request "$PAIRS" --rate "$rate" --warmup 0 \
    --duration 10 --max-duration 10 --min-requests 1 --json > "$out/w$w.json" 2>/dev/null
  to=$(date +%s%3N)
  echo "$w $from $to $fds" >> "$out/windows"
done
kill -TERM "$pid"
wait "$pid" && rc=0 || rc=$?
wait "$sampler" 2>/dev/null || true
trap 'rm -rf "$out"' EXIT

python3 - "$out" "$WARMUP" "$rc" <<'PY'
import json, statistics, sys
out, warmup, rc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rss = [tuple(map(int, l.split())) for l in open(f"{out}/rss") if l.strip()]
begin = int(open(f"{out}/begin").read())
rows = []
documented = {"overloaded", "unavailable"}
for line in open(f"{out}/windows"):
    w, a0, a1, fds = map(int, line.split())
    r = json.load(open(f"{out}/w{w}.json"))
    errors = r["errors"]
    lost = sum(v for k, v in errors.items() if k not in documented)
    rejected = sum(v for k, v in errors.items() if k in documented)
    rows.append({"w": w, "a0": a0, "a1": a1, "t0": a0 - begin, "t1": a1 - begin, "fds": fds, "requests": r["requests"],
                 "rejected": rejected, "lost": lost, "p99": r["latency_ms"]["p99"],
                 "qps": r["qps"], "errors": errors})
for row in rows:
    inside = [kb for t, kb in rss if row["a0"] <= t <= row["a1"]]
    row["rss_mb"] = min(inside) / 1024 if inside else float("nan")
print("| window | seconds | requests | rejected | lost | pairs/s | p99 ms | resting RSS MB | open fds |")
print("|---|---|---|---|---|---|---|---|---|")
for row in rows:
    print(f"| {row['w']} | {row['t0'] / 1000:.0f}-{row['t1'] / 1000:.0f} | {row['requests']} | {row['rejected']} | {row['lost']} | {row['qps']:.1f} | {row['p99']:.0f} | {row['rss_mb']:.0f} | {row['fds']} |")
measured = [r for r in rows if r["t0"] >= warmup * 1000]
fail = []
if len(measured) < 2:
    fail.append("fewer than 2 windows after the warm-up")
else:
    first, last = measured[0], measured[-1]
    growth = last["rss_mb"] / first["rss_mb"] - 1
    head = statistics.median(r["p99"] for r in measured[:3])
    tail = statistics.median(r["p99"] for r in measured[-3:])
    sent = sum(r["requests"] + r["rejected"] + r["lost"] for r in rows)
    lost = sum(r["lost"] for r in rows)
    print(f"after the {warmup} s warm-up: resting RSS {first['rss_mb']:.0f} -> {last['rss_mb']:.0f} MB ({growth:+.1%}); "
          f"open fds {first['fds']} -> {last['fds']}; p99 (median of 3 windows) {head:.0f} -> {tail:.0f} ms; "
          f"requests sent {sent}, answered {sum(r['requests'] for r in rows)}, refused {sum(r['rejected'] for r in rows)}, lost {lost}")
    if growth > 0.10:
        fail.append(f"resting RSS grew {growth:.1%} (more than 10%)")
    if last["fds"] > first["fds"]:
        fail.append(f"open fds grew from {first['fds']} to {last['fds']}")
    if tail > 2 * head:
        fail.append(f"p99 more than doubled ({head:.0f} -> {tail:.0f} ms)")
    if lost:
        kinds = {}
        for r in rows:
            for k, v in r["errors"].items():
                if k not in documented:
                    kinds[k] = kinds.get(k, 0) + v
        fail.append(f"{lost} requests lost ({kinds})")
if rc != 0:
    fail.append(f"xbench serve exited {rc} after SIGTERM")
if fail:
    print("FAIL: " + "; ".join(fail))
    sys.exit(1)
print("OK: no request lost, no RSS or fd growth, p99 steady, clean shutdown")
PY
