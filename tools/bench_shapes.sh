#!/usr/bin/env bash
# Benchmarks the BLAS and the three reference shapes of docs/performance.md, one JSON file each in
# docs/bench/. OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are unset so that OpenBLAS picks its kernel by
# itself (some environments force a slower one). Usage: tools/bench_shapes.sh [iters]
set -euo pipefail
cd "$(dirname "$0")/.."
iters=${1:-5}
out=docs/bench
mkdir -p "$out"
run() { env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$@"; }
exe=./build/src/tapestry
for threads in 1 2; do
  OPENBLAS_NUM_THREADS=$threads run $exe bench gemm --size 2048 --iters 10
done
run $exe bench step --n-layer 12 --n-head 12 --d-model 768 --vocab-size 50257 --max-seq-len 1024 -b 4 -t 64 \
  --iters "$iters" --json $out/s1.json
run $exe bench step --n-layer 6 --n-head 6 --d-model 384 --vocab-size 256 --max-seq-len 256 -b 8 -t 256 \
  --iters "$iters" --json $out/s2.json
run $exe bench step --n-layer 4 --n-head 4 --d-model 128 --vocab-size 256 --max-seq-len 128 -b 16 -t 128 \
  --iters "$iters" --json $out/s3.json
# L1: a Llama-style shape (RMSNorm, RoPE, GQA 8/2, SwiGLU 1376, untied, V=32000)
run $exe bench step --arch llama --n-layer 8 --d-model 512 --n-head 8 --n-kv-head 2 --ffn-dim 1376 --vocab-size 32000 \
  --max-seq-len 256 -b 4 -t 256 --iters "$iters" --json $out/l1.json
