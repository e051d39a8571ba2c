#!/usr/bin/env bash
# Installs the API clients the tests drive xbench's server with into .venv-clients (a virtual
# environment of its own, from PyPI): Cohere's Python SDK, whose ClientV2 calls /v2/rerank and
# whose Client calls /v1/rerank. Idempotent: an environment that already has the pinned versions is
# left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-clients
PACKAGES=("cohere==7.3.1")
PYTHON="${PYTHON:-python3}"

installed() {
  [[ -x "$VENV/bin/python" ]] || return 1
  "$VENV/bin/python" - "${PACKAGES[@]}" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    if version(name) != want:
        sys.exit(1)
PY
}

if installed; then
  exit 0
fi
echo "installing ${PACKAGES[*]} into $VENV ..."
if [[ ! -x "$VENV/bin/python" ]]; then
  "$PYTHON" -m venv "$VENV" || {
    echo "error: '$PYTHON -m venv' failed; install Python's venv module (Debian: apt-get install python3-venv)" >&2
    exit 1
  }
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}" || {
  echo "error: could not install ${PACKAGES[*]} from PyPI; check that PyPI is reachable (pip config, proxy)" >&2
  exit 1
}
installed || { echo "error: $VENV does not have ${PACKAGES[*]} after installing them" >&2; exit 1; }
echo "installed: ${PACKAGES[*]}"
