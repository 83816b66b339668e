#!/usr/bin/env bash
# Strong and weak scaling sweep: `tapestry bench step` (and `bench allreduce`) over rank counts,
# collected into CSV/JSON and plotted by tools/scaling.py.
#
#   tools/scaling.sh OUT_DIR                         # here: mpirun, ranks "1 2 4"
#   TAPESTRY_LAUNCH="srun --mpi=pmix -n" ...          # inside a Slurm allocation (jobs/slurm/scaling.sbatch)
#
# Environment:
#   TAPESTRY_BIN        executable (default build/src/tapestry)
#   TAPESTRY_LAUNCH     launcher taking the rank count next (default "tools/mpirun.sh -np")
#   TAPESTRY_RANKS      rank counts (default "1 2 4")
#   TAPESTRY_SHAPE      model flags (default S2: --n-layer 6 --n-head 6 --d-model 384 --vocab-size 256 --max-seq-len 256 -t 256)
#   TAPESTRY_BATCH      per-rank batch for weak scaling (default 8)
#   TAPESTRY_GLOBAL     global batch for strong scaling (default: BATCH x largest rank count)
#   TAPESTRY_ITERS      timed steps per point (default 3)
#   TAPESTRY_PEAK       peak FLOP/s per rank for MFU (default 218.5e9: one Zen 5 core)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: tools/scaling.sh OUT_DIR}
mkdir -p "$out"
bin=${TAPESTRY_BIN:-$root/build/src/tapestry}
read -r -a launch <<< "${TAPESTRY_LAUNCH:-$root/tools/mpirun.sh -np}"
read -r -a ranks <<< "${TAPESTRY_RANKS:-1 2 4}"
read -r -a shape <<< "${TAPESTRY_SHAPE:---n-layer 6 --n-head 6 --d-model 384 --vocab-size 256 --max-seq-len 256 -t 256}"
batch=${TAPESTRY_BATCH:-8}
largest=${ranks[-1]}
global=${TAPESTRY_GLOBAL:-$((batch * largest))}
iters=${TAPESTRY_ITERS:-3}
peak=${TAPESTRY_PEAK:-218.5e9}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
for n in "${ranks[@]}"; do
  [ $((global % n)) -eq 0 ] || { echo "scaling.sh: global batch $global does not divide over $n ranks" >&2; exit 1; }
  "${launch[@]}" "$n" "$bin" bench step "${shape[@]}" -b "$batch" --iters "$iters" --peak-flops "$peak" \
    --json "$out/weak_n$n.json" | sed -n 2,3p
  "${launch[@]}" "$n" "$bin" bench step "${shape[@]}" -b $((global / n)) --iters "$iters" --peak-flops "$peak" \
    --json "$out/strong_n$n.json" | sed -n 2,3p
  if [ "$n" -gt 1 ]; then
    "${launch[@]}" "$n" "$bin" bench allreduce -b 1048576 -e 67108864 -f 4 -n 10 -o "$out/allreduce_n$n.json" | tail -1
  fi
done
/usr/bin/python3 "$root/tools/scaling.py" "$out"
