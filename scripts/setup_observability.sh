#!/usr/bin/env bash
# Gets the observability stack ready: with Docker, pulls the Prometheus and Grafana images of
# docker-compose.yml; without Docker, installs Prometheus from the Debian package instead (Grafana
# is not packaged by Debian: import observability/grafana/dashboards/xbench.json into yours).
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  docker compose pull
  echo "images pulled; start with ./scripts/start_services.sh"
  exit 0
fi
echo "Docker is missing (or its engine is not running): falling back to a native Prometheus." >&2
./scripts/install_prometheus.sh
echo "prometheus: $(command -v prometheus); start with ./scripts/start_services.sh"
