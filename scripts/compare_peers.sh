#!/usr/bin/env bash
# xbench against sentence-transformers (PyTorch fp32) and ONNX Runtime (fp32, all graph
# optimizations) on the same pairs, checkpoint and thread count, in one run: pairs/s at batch
# 8/32/128, the ratios, and model FLOPs utilisation against the machine's fp32 GEMM peak measured by
# the same run (details in scripts/compare_peers.py).
#   ./scripts/compare_peers.sh [PAIRS_FILE]          (default data/pairs.jsonl)
# Environment: PAIRS (256), BATCHES (8,32,128), PASSES (3), THREADS (2),
#   MODEL (models/demo-minilm-l6), JSON_OUT (experiments/results/compare_peers.json).
# The Python peers go into a virtual environment of the script's own, .venv-peers (pip: torch,
# transformers, sentence-transformers, onnxruntime, onnx; a few GB with torch's CUDA wheels), never
# into CI. Run it on a quiet machine: it times things.
set -euo pipefail
cd "$(dirname "$0")/.."
INPUT="${1:-data/pairs.jsonl}"
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
  --input "$INPUT" --model "${MODEL:-models/demo-minilm-l6}" --pairs "${PAIRS:-256}" \
  --batches "${BATCHES:-8,32,128}" --passes "${PASSES:-3}" --threads "${THREADS:-2}" \
  --json-out "${JSON_OUT:-experiments/results/compare_peers.json}" 2> >(grep -v -i warning >&2)
