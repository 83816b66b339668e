#!/usr/bin/env bash
# Serial vs OpenMP builds on this node's cores (docs/performance.md, "Threads"): S1 and S3 at
# 1 rank x all cores (OpenMP build: Kokkos and OpenBLAS on one OpenMP pool; Serial build: Kokkos on
# one core, OpenBLAS pthreads on all) and at one rank per core x 1 thread; median tokens/s of
# ROUNDS interleaved rounds. Usage: tools/bench_threads.sh [rounds] [serial build] [openmp build]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3} serial=${2:-build} openmp=${3:-build-openmp}
cores=$(nproc)
S1="--n-layer 12 --n-head 12 --d-model 768 --vocab-size 50257 --max-seq-len 1024 -b 4 -t 64 --iters 5"
S3="--n-layer 4 --n-head 4 --d-model 128 --vocab-size 256 --max-seq-len 128 -b 16 -t 128 --iters 5"
run() { env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$@" 2>&1 | sed -n 's/.*tokens\/s \([0-9]*\).*/\1/p'; }
declare -A t
for r in $(seq "$rounds"); do
  for shape in S1 S3; do
    flags=${!shape}
    # shellcheck disable=SC2086
    t[$shape,serial_1x$cores]+="$(run $serial/src/tapestry bench step $flags) "
    t[$shape,openmp_1x$cores]+="$(run $openmp/src/tapestry bench step $flags) "
    t[$shape,serial_${cores}x1]+="$(OPENBLAS_NUM_THREADS=1 run tools/mpirun.sh -np $cores -x OPENBLAS_NUM_THREADS $serial/src/tapestry bench step $flags) "
    t[$shape,openmp_${cores}x1]+="$(run tools/mpirun.sh -np $cores $openmp/src/tapestry bench step $flags) "
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "| shape | build, ranks x threads | tokens/s (median of $rounds) | all runs | vs Serial 1 x $cores |"
echo "|---|---|---|---|---|"
for shape in S1 S3; do
  base=$(echo "${t[$shape,serial_1x$cores]}" | median)
  for k in serial_1x$cores openmp_1x$cores serial_${cores}x1 openmp_${cores}x1; do
    m=$(echo "${t[$shape,$k]}" | median)
    echo "| $shape | ${k/_/, } | $m | ${t[$shape,$k]}| $(awk -v a="$m" -v b="$base" 'BEGIN {printf "%.2fx", a / b}') |"
  done
done
