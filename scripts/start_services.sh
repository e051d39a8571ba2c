#!/usr/bin/env bash
# Starts an xbench server (release build) and the observability stack that scrapes it:
#   ./scripts/start_services.sh [serve arguments, e.g. 03_full_pipeline batching.max_batch_size=16]
# The server listens on 127.0.0.1:8080 (server.port); its pid and log go to .run/. With Docker the
# stack is docker-compose.yml (Prometheus :9090, Grafana :3000); without it, a native Prometheus
# (./scripts/setup_observability.sh installs it) on :9090. Stop everything with
# ./scripts/stop_all_servers.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .run
./scripts/fetch_demo_model.sh
cargo build --release --locked
if [[ -f .run/xbench-serve.pid ]] && kill -0 "$(cat .run/xbench-serve.pid)" 2>/dev/null; then
  echo "an xbench server started by these scripts is running (pid $(cat .run/xbench-serve.pid)); stop it first" >&2
  exit 1
fi
nohup ./target/release/xbench serve "$@" > .run/xbench-serve.log 2>&1 &
echo $! > .run/xbench-serve.pid
echo "xbench serve: pid $(cat .run/xbench-serve.pid), log .run/xbench-serve.log"
for _ in $(seq 1 240); do
  if curl -fsS http://127.0.0.1:8080/health >/dev/null 2>&1; then
    echo "xbench is ready: http://127.0.0.1:8080 (try: curl -s http://127.0.0.1:8080/info)"
    break
  fi
  if ! kill -0 "$(cat .run/xbench-serve.pid)" 2>/dev/null; then
    echo "error: xbench serve exited; see .run/xbench-serve.log:" >&2
    tail -n 20 .run/xbench-serve.log >&2
    exit 1
  fi
  sleep 0.5
done
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  docker compose up -d
  echo "Prometheus: http://127.0.0.1:9090  Grafana: http://127.0.0.1:3000 (dashboard 'xbench')"
elif command -v prometheus >/dev/null 2>&1; then
  echo "Docker is missing: starting a native Prometheus instead (no Grafana)." >&2
  nohup prometheus --config.file=observability/prometheus.yml --storage.tsdb.path=.run/prometheus-data \
    --web.listen-address=127.0.0.1:9090 > .run/prometheus.log 2>&1 &
  echo $! > .run/prometheus.pid
  echo "Prometheus: http://127.0.0.1:9090 (pid $(cat .run/prometheus.pid), log .run/prometheus.log)"
else
  echo "Docker and prometheus are both missing: run ./scripts/setup_observability.sh for the stack." >&2
fi
