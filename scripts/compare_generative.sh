#!/usr/bin/env bash
# xbench (fp32, fp32 without prefix sharing, bf16, int8) against transformers (PyTorch fp32 and bf16)
# on a generative reranker (Qwen3ForCausalLM through the Qwen3-Reranker prompt), on the same requests
# of 32 documents, checkpoint and thread count, in one run, the engines interleaved round after round:
# pairs/s (median and spread), the ratios, what sharing a request's prompt prefix saves, and the
# scores' agreement with transformers fp32 (details in scripts/compare_generative.py).
#   ./scripts/compare_generative.sh --model DIR [--rounds 3] [--engines torch-fp32,xbench-fp32,...]
#       [--requests-per-cell N | --cell-seconds 15] [--passage-words 40] [--threads 2] [--json-out FILE]
# DIR: a Qwen3-Reranker checkpoint, e.g. the random-weight one of Qwen3-Reranker-0.6B's shape that
#   .venv-peers/bin/python scripts/make_shaped_model.py qwen3-reranker-0.6b /tmp/qwen3-0.6b
# writes. Default JSON: experiments/results/compare_generative.json.
# The Python peers go into a virtual environment of the script's own, .venv-peers (pip: torch,
# transformers), never into CI. Run it on a quiet machine: it times things.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-peers
if ! "$VENV/bin/python" -c 'import torch, transformers' 2>/dev/null; then
  echo "installing the peers into $VENV ..." >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet torch transformers
fi
cargo build --release --locked >&2
mkdir -p experiments/results
HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false "$VENV/bin/python" scripts/compare_generative.py "$@" \
  2> >(grep -v -i warning >&2)
