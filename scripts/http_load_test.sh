#!/usr/bin/env bash
# The bounded load test over HTTP: `xbench serve` (release, conf/config.yaml: the demo model, one
# tokenizer and one model worker, batching on) under a closed loop of 8 clients for DURATION
# seconds (default 60), 8 pairs per request, measured with `xbench bench --target`; then the same
# load on the same engine in process. Prints both rows and the server's RSS, and fails on any
# error, on a server that does not exit 0 after SIGTERM, or when the server's resting RSS over the
# last 10 s is more than 10% above its resting RSS over 5-15 s (resting = the minimum between
# batches; the padded batch in flight swings the instantaneous RSS by hundreds of MB).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-60}"
PORT="${PORT:-18080}"
(( DURATION >= 30 )) || { echo "DURATION must be at least 30 seconds" >&2; exit 2; }
./scripts/fetch_demo_model.sh >&2
cargo build --release --locked >&2
X=./target/release/xbench
out="$(mktemp -d)"
load=(--pairs-per-request 8 --concurrency 8 --warmup 4 --min-requests 1 --duration "$DURATION" --max-duration "$DURATION" --json)

"$X" serve server.port="$PORT" > "$out/serve.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$out"' EXIT
until curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; do
  kill -0 "$pid" 2>/dev/null || { cat "$out/serve.log" >&2; echo "xbench serve exited" >&2; exit 1; }
  sleep 0.2
done
( start=$(date +%s%N)
  while kill -0 "$pid" 2>/dev/null; do
    kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    [[ -n "$kb" ]] && echo "$(( ($(date +%s%N) - start) / 1000000 )) $kb"
    sleep 0.2
  done ) > "$out/rss" &
"$X" bench --target "http://127.0.0.1:$PORT" "${load[@]}" > "$out/http.json" 2>/dev/null
kill -TERM "$pid"
wait "$pid" && rc=0 || rc=$?
trap 'rm -rf "$out"' EXIT
"$X" bench --tokenizer-workers 1 --model-workers 1 "${load[@]}" > "$out/inproc.json" 2>/dev/null

python3 - "$out" "$DURATION" "$rc" <<'PY'
import json, sys
out, duration, rc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = {k: json.load(open(f"{out}/{k}.json")) for k in ("inproc", "http")}
print("| where | requests | errors | RPS | QPS (pairs/s) | p50 ms | p99 ms |")
print("|---|---|---|---|---|---|---|")
for k, name in (("inproc", "in process"), ("http", "over HTTP")):
    r = rows[k]
    print(f"| {name} | {r['requests']} | {sum(r['errors'].values())} | {r['rps']:.2f} | {r['qps']:.1f} | {r['latency_ms']['p50']:.0f} | {r['latency_ms']['p99']:.0f} |")
print(f"HTTP/in-process QPS ratio: {rows['http']['qps'] / rows['inproc']['qps']:.3f}")
samples = [tuple(map(int, l.split())) for l in open(f"{out}/rss") if l.strip()]
early = [kb for t, kb in samples if 5000 <= t < 15000]
late = [kb for t, kb in samples if t >= (duration - 10) * 1000]
fail = []
if early and late:
    growth = min(late) / min(early) - 1
    print(f"server resting RSS: {min(early)} kB at 5-15 s, {min(late)} kB in the last 10 s ({growth:+.1%}); peak {max(kb for _, kb in samples)} kB")
    if growth > 0.10:
        fail.append("resting RSS grew by more than 10%")
else:
    fail.append("too few RSS samples")
if sum(rows["http"]["errors"].values()) or sum(rows["inproc"]["errors"].values()):
    fail.append("errors under load")
if rc != 0:
    fail.append(f"xbench serve exited {rc} after SIGTERM")
if fail:
    print("FAIL: " + "; ".join(fail))
    sys.exit(1)
print("OK: no errors, no RSS growth, clean shutdown")
PY
