#!/usr/bin/env bash
# Stops what ./scripts/start_services.sh started: the compose stack (with Docker), and every
# process whose pid it recorded in .run/ (SIGTERM: xbench finishes the requests in flight first).
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  docker compose down
fi
shopt -s nullglob
for f in .run/*.pid; do
  pid="$(cat "$f")"
  name="$(basename "$f" .pid)"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 120); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "$name (pid $pid) did not stop in 60 s; sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    else
      echo "stopped $name (pid $pid)"
    fi
  fi
  rm -f "$f"
done
