#!/usr/bin/env bash
# fp32 against bf16 products on this CPU (issue #18, item 6): S1 (GPT-2 124M shapes, B=4, T=64) and
# L1 (Llama-style) at 1 rank (threads: the node's cores) and at one rank per core, `bench step`
# each, JSON in docs/bench/bf16/. Prints the CPU's bf16 flags and OpenBLAS's kernel first.
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are unset so that OpenBLAS picks its kernel by itself.
# Usage: tools/bench_bf16_cpu.sh [iters]   (run on an otherwise idle machine)
set -euo pipefail
cd "$(dirname "$0")/.."
iters=${1:-5}
out=docs/bench/bf16
mkdir -p "$out"
exe=./build/src/tapestry
cores=$(nproc)
run() { env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$@"; }
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $cores cores;" \
  "flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_bf16|amx_bf16)$' | tr '\n' ' ')"
run OPENBLAS_VERBOSE=2 $exe bench gemm --size 64 --iters 1 2>&1 | grep -i "core:" | head -1 || true
for t in 1 "$cores"; do
  for p in fp32 bf16; do
    run OPENBLAS_NUM_THREADS=$t OMP_NUM_THREADS=$t $exe bench gemm --size 2048 --iters 10 --precision $p | grep "^# bench gemm"
  done
done
s1=(--n-layer 12 --n-head 12 --d-model 768 --vocab-size 50257 --max-seq-len 1024 -b 4 -t 64)
l1=(--arch llama --n-layer 8 --d-model 512 --n-head 8 --n-kv-head 2 --ffn-dim 1376 --vocab-size 32000 --max-seq-len 256 -b 4 -t 256)
for shape in s1 l1; do
  declare -n flags=$shape
  for p in fp32 bf16; do
    echo "== $shape $p, 1 rank"
    run $exe bench step "${flags[@]}" --precision $p --iters "$iters" --json $out/${shape}_${p}_1rank.json | sed -n 2,4p
    echo "== $shape $p, $cores ranks x 1 thread"
    run OPENBLAS_NUM_THREADS=1 tools/mpirun.sh -np "$cores" -x OPENBLAS_NUM_THREADS $exe bench step "${flags[@]}" \
      --precision $p --iters "$iters" --json $out/${shape}_${p}_${cores}ranks.json | sed -n 2,4p
  done
done
