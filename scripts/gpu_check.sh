#!/usr/bin/env bash
# The CUDA check, for a machine with an NVIDIA GPU and the CUDA toolkit (nvcc): builds xbench with
# `--features cuda`, runs the parity tests on cuda:0 (fp32 logits within 1e-4 of transformers',
# batch size changing nothing beyond 1e-5; bf16 and fp16 through candle's ops within their pinned
# tolerances; int8 and int4 are CPU-only and skip), then one bench cell on the GPU in fp32 and one
# in fp16. A few minutes.
#   ./scripts/gpu_check.sh [DEVICE]      (default cuda:0)
# CI has no GPU and does not run it; these machines have no nvcc, so candle's CUDA kernels cannot
# build here.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE="${1:-cuda:0}"
command -v nvcc >/dev/null || { echo "nvcc not found: install the CUDA toolkit first" >&2; exit 1; }
nvidia-smi -L
./scripts/fetch_demo_model.sh
echo "== build (release, --features cuda)"
cargo build --release --locked --features cuda
echo "== parity on $DEVICE"
XBENCH_TEST_DEVICE="$DEVICE" cargo test --release --locked --features cuda --test parity -- --nocapture
echo "== one bench cell on $DEVICE (candle's ops; the fused backend is CPU-only)"
for precision in fp32 fp16; do
  ./target/release/xbench bench --device "$DEVICE" --backend candle --stage infer \
    --quantization "$precision" --pairs-per-request 32 --concurrency 2 --duration 10 --min-requests 20
done
