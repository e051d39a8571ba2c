#!/usr/bin/env bash
# xbench (fp32, int8) against sentence-transformers (PyTorch fp32) and ONNX Runtime (fp32 in file
# order and on length-sorted batches, as Infinity runs it; dynamic int8) on the same pairs,
# checkpoint and thread count, in one run, the engines interleaved round after round: pairs/s at
# batch 8/32/128 (median and spread), the ratios, and model FLOPs utilisation against the machine's
# fp32 GEMM peak measured by the same run (details in scripts/compare_peers.py).
#   ./scripts/compare_peers.sh [--model DIR] [PAIRS_FILE]   (default data/pairs.jsonl)
# --model takes any checkpoint xbench loads (scripts/make_shaped_model.py writes random-weight ones
# of real rerankers' shapes). Environment: PAIRS (256), BATCHES (8,32,128), PASSES (3), THREADS (2),
#   MODEL (models/demo-minilm-l6), JSON_OUT (experiments/results/compare_peers.json), CANDLE=1 (add
#   xbench on candle's ops).
# The Python peers go into a virtual environment of the script's own, .venv-peers (pip: torch,
# transformers, sentence-transformers, onnxruntime, onnx; a few GB with torch's CUDA wheels), never
# into CI. Run it on a quiet machine: it times things.
set -euo pipefail
cd "$(dirname "$0")/.."
INPUT=data/pairs.jsonl
MODEL="${MODEL:-models/demo-minilm-l6}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) MODEL="${2:?--model needs a directory}"; shift 2 ;;
    *) INPUT="$1"; shift ;;
  esac
done
VENV=.venv-peers
if ! "$VENV/bin/python" -c 'import torch, transformers, sentence_transformers, onnxruntime, onnx' 2>/dev/null; then
  echo "installing the peers into $VENV ..." >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet torch transformers sentence-transformers onnxruntime onnx
fi
./scripts/fetch_demo_model.sh >&2
cargo build --release --locked >&2
mkdir -p experiments/results
HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false "$VENV/bin/python" scripts/compare_peers.py \
  --input "$INPUT" --model "$MODEL" --pairs "${PAIRS:-256}" \
  --batches "${BATCHES:-8,32,128}" --passes "${PASSES:-3}" --threads "${THREADS:-2}" \
  --json-out "${JSON_OUT:-experiments/results/compare_peers.json}" 2> >(grep -v -i warning >&2)
