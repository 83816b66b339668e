#!/usr/bin/env bash
# overlap.sh - `--overlap-grad-reduce` measured with 2 data-parallel ranks, without and with the
# flag in alternating pairs (REPS of them) of `tapestry bench step` on MODEL:
#   wan:   one rank on each of 2 emulated sites (tools/wan/wan.sh: DELAY_MS one-way, RATE per link),
#          the gradient all-reduce over TCP;
#   node:  both ranks on this node (shared memory), for comparison.
# Then, on the sites, TRAIN_REPS pairs of 6-step `tapestry train --zero 1` runs (the same model),
# where the flag also overlaps ZeRO-1's parameter all-gather with the next forward.
# Raw JSON and logs go to docs/wan/overlap_*; the medians are printed (and are what docs/wan.md and
# docs/performance.md quote). Root only; tears the sites down on exit. About 7 minutes on 2 cores.
#
# Env: TAPESTRY (binary, default build/src/tapestry), DELAY_MS (20), RATE (1gbit), REPS (4), TRAIN_REPS (2),
# NETS ("wan node"), MODEL (bench step's model and batch flags), RUN_TIMEOUT (s per run, 300).
# `tools/wan/overlap.sh report` prints the table again from the recorded JSON.
set -uo pipefail
[ -z "${TAPESTRY:-}" ] || TAPESTRY=$(realpath -- "$TAPESTRY")
cd "$(dirname "$0")/../.." || exit 1
export TAPESTRY=${TAPESTRY:-build/src/tapestry} WAN_STATE=${WAN_STATE:-/tmp/tapestry-wan}
export SITES=2 RANKS_PER_SITE=1 OPENBLAS_NUM_THREADS=1 DELAY_MS=${DELAY_MS:-20} RATE=${RATE:-1gbit}
OUT=docs/wan WAN=tools/wan/wan.sh DATA=$WAN_STATE/data REPS=${REPS:-4} RUN_TIMEOUT=${RUN_TIMEOUT:-300}
read -ra MODEL <<<"${MODEL:---n-layer 6 --n-head 8 --d-model 512 --vocab-size 8192 --max-seq-len 256 -b 8 -t 256 --warmup 1 --iters 3}"
report() {  # the medians of the JSON in $OUT
  python3 - "$OUT" <<'PY'
import glob, json, statistics, sys
out = sys.argv[1]
print("bench step (medians):")
print("| network | overlap | ms/step | backward | all-reduce after backward | runs |")
print("|---|---|---|---|---|---|")
for net in ("wan", "node"):
    for mode in ("off", "on"):
        runs = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/overlap_{net}_{mode}_*.json"))]
        if runs:
            med = lambda k: statistics.median(r[k] for r in runs)
            print(f"| {net} | {mode} | {med('ms_per_step'):.0f} | {med('backward_ms'):.0f} | {med('comm_ms'):.0f} | {len(runs)} |")
print("train --zero 1 on the sites (steps 2-6 of each run, medians):")
print("| overlap | ms/step | comm (waits) | final loss | runs |")
print("|---|---|---|---|---|")
for mode in ("off", "on"):
    steps, losses = [], []
    for f in sorted(glob.glob(f"{out}/overlap_train_{mode}_*.jsonl")):
        recs = [json.loads(l) for l in open(f) if '"ms"' in l]
        steps += [r for r in recs if r["step"] >= 2]
        losses.append(recs[-1]["loss"])
    if steps:
        med = lambda k: statistics.median(r[k] for r in steps)
        print(f"| {mode} | {med('ms'):.0f} | {med('comm_ms'):.0f} | {' '.join(f'{x:.6f}' for x in losses)} | {len(losses)} |")
PY
}
if [ "${1:-}" = report ]; then report; exit; fi
. tools/wan/prelude.sh
wan_prelude overlap.sh
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE  # OpenBLAS picks its kernel for this CPU (logged below)
rm -f "$OUT"/overlap_*
{
  echo "date=$(date -Is) tapestry=$TAPESTRY delay_ms=$DELAY_MS rate=$RATE reps=$REPS model=${MODEL[*]}"
  grep -m1 'model name' /proc/cpuinfo
  echo "cpu flags: $(grep -m1 -o -w -e avx2 -e avx512f -e avx512_bf16 /proc/cpuinfo | sort -u | tr '\n' ' ')"
  OPENBLAS_VERBOSE=2 "$TAPESTRY" bench gemm --size 64 --iters 1 2>&1 | grep -i -m1 core
} >"$OUT/overlap_env.txt"
FAILED=0
for net in ${NETS:-wan node}; do
  if [ "$net" = wan ]; then
    "$WAN" up || die "wan.sh up failed"
    "$WAN" check >>"$OUT/overlap_env.txt" 2>&1
  fi
  for ((i = 0; i < REPS; i++)); do
    for flag in "" --overlap-grad-reduce; do
      mode=off; [ -n "$flag" ] && mode=on
      name=overlap_${net}_${mode}_$i
      cmd=("$TAPESTRY" bench step "${MODEL[@]}" $flag --json "$OUT/$name.json")
      if [ "$net" = wan ]; then
        MPIRUN_ARGS="-x OPENBLAS_NUM_THREADS" timeout "$RUN_TIMEOUT" "$WAN" run "${cmd[@]}" >"$OUT/$name.log" 2>&1
      else
        timeout "$RUN_TIMEOUT" tools/mpirun.sh -np 2 -x OPENBLAS_NUM_THREADS "${cmd[@]}" >"$OUT/$name.log" 2>&1
      fi || { echo "FAILED: $name (see $OUT/$name.log)"; FAILED=1; }
      grep 'ms/step' "$OUT/$name.log" | sed "s/^/$name: /"
    done
  done
  if [ "$net" = wan ]; then
    # bench step's flags as train's: -b, -t spelled out, no --warmup / --iters
    read -ra TRAIN_MODEL <<<"$(printf '%s\n' "${MODEL[@]}" | sed -e 's/^-b$/--batch-size/' -e 's/^-t$/--seq-len/' |
      paste -sd' ' | sed -e 's/--warmup [0-9]*//' -e 's/--iters [0-9]*//')"
    for ((i = 0; i < ${TRAIN_REPS:-2}; i++)); do
      for flag in "" --overlap-grad-reduce; do
        mode=off; [ -n "$flag" ] && mode=on
        name=overlap_train_${mode}_$i
        MPIRUN_ARGS="-x OPENBLAS_NUM_THREADS" timeout "$RUN_TIMEOUT" "$WAN" run "$TAPESTRY" train "${TRAIN_MODEL[@]}" \
          --train-data "$DATA/corpus_train.bin" --val-data "$DATA/corpus_val.bin" --global-batch 16 --steps 6 \
          --log-every 1 --val-every 0 --zero 1 --ckpt-dir "$WAN_STATE/ckpt" --metrics-file "$OUT/$name.jsonl" $flag \
          >"$OUT/$name.log" 2>&1 || { echo "FAILED: $name (see $OUT/$name.log)"; FAILED=1; }
        grep '^step' "$OUT/$name.log" | tail -1 | sed "s/^/$name: /"
      done
    done
    "$WAN" down >/dev/null 2>&1
  fi
done
cat "$OUT/overlap_env.txt"
report
exit $FAILED
