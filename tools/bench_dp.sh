#!/usr/bin/env bash
# Data-parallel scaling on one node: S1 and S2 at 1 and 2 ranks, one BLAS thread per rank, then the
# all-reduce sweep at 2 ranks. JSON/CSV in docs/bench/. Usage: tools/bench_dp.sh [iters]
set -euo pipefail
cd "$(dirname "$0")/.."
iters=${1:-5}
out=docs/bench
mkdir -p "$out"
exe=./build/src/tapestry
export OPENBLAS_NUM_THREADS=1
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE
s1=(--n-layer 12 --n-head 12 --d-model 768 --vocab-size 50257 --max-seq-len 1024 -b 4 -t 64)
s2=(--n-layer 6 --n-head 6 --d-model 384 --vocab-size 256 --max-seq-len 256 -b 8 -t 256)
for np in 1 2; do
  tools/mpirun.sh -np $np $exe bench step "${s1[@]}" --iters "$iters" --json $out/s1_dp$np.json
  tools/mpirun.sh -np $np $exe bench step "${s2[@]}" --iters "$iters" --json $out/s2_dp$np.json
done
tools/mpirun.sh -np 2 $exe bench allreduce -o $out/allreduce_np2.json
