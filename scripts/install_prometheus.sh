#!/usr/bin/env bash
# Installs Prometheus from the Debian package when it is missing (the metrics test runs a real
# Prometheus; the observability scripts fall back to it without Docker). Idempotent.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [[ "$(id -u)" != 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { echo "error: prometheus is missing and installing it needs root or sudo: apt-get install prometheus" >&2; exit 1; }
  SUDO="sudo"
fi
echo "installing prometheus from the Debian package ..."
install() { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
install || { $SUDO apt-get update -qq && install; }
command -v prometheus >/dev/null 2>&1 || { echo "error: apt-get installed prometheus but it is not on PATH" >&2; exit 1; }
echo "prometheus installed: $(prometheus --version 2>&1 | head -n 1)"
