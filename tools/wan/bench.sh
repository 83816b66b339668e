#!/usr/bin/env bash
# bench.sh - Tapestry across 2 emulated sites x 2 ranks (tools/wan/wan.sh), over the WAN
# (DELAY_MS one-way, RATE per link) and, for comparison, over the same namespaces with no delay
# and no rate limit. For each network it records: the measured round trip and TCP rate
# (wan.sh check), the rank -> site mapping (must be site-contiguous: 0,1 on siteA, 2,3 on siteB,
# as `--sites 2` assumes), a 4-byte all-reduce cross-site and intra-site, the `bench allreduce`
# sweep of ALLREDUCE_VARIANTS, and STEPS-step trainings of TRAIN_VARIANTS. Raw results go to
# docs/wan/, the tables to docs/wan.md (tools/wan/report.py; rerun it alone to rebuild them).
# Root only; always tears the sites down on exit. About 5 minutes on 2 busy cores.
#
# Env: TAPESTRY (binary, default build/src/tapestry), DELAY_MS (20), RATE (1gbit), STEPS (120),
# NETS ("wan nowan"; STEPS >= 100 so that DiLoCo H=100 makes its outer step), BENCH_ARGS (sizes etc. of `bench allreduce`), RUN_TIMEOUT (s per run, 300).
set -uo pipefail
[ -z "${TAPESTRY:-}" ] || TAPESTRY=$(realpath -- "$TAPESTRY")   # relative to the caller's directory
cd "$(dirname "$0")/../.." || exit 1
export TAPESTRY=${TAPESTRY:-build/src/tapestry} WAN_STATE=${WAN_STATE:-/tmp/tapestry-wan}
export SITES=2 RANKS_PER_SITE=2 OPENBLAS_NUM_THREADS=1
OUT=docs/wan WAN=tools/wan/wan.sh STEPS=${STEPS:-120} RUN_TIMEOUT=${RUN_TIMEOUT:-300}
WAN_DELAY_MS=${DELAY_MS:-20} WAN_RATE=${RATE:-1gbit}
read -ra BENCH_ARGS <<<"${BENCH_ARGS:--b 4 -e 8388608 -f 8 -w 2 -n 10}"

# ===== VARIANTS ("name|extra flags"); append new ones here, e.g. DiLoCo: "diloco-h8|... --outer-steps 8"
ALLREDUCE_VARIANTS=(
  "flat|--algo flat"
  "hier|--algo hierarchical --sites 2"
  "hier-int8|--algo hierarchical --sites 2 --compress int8"
)
TRAIN_VARIANTS=(
  "flat|--grad-reduce flat --sites 2"
  "hier|--grad-reduce hierarchical --sites 2"
  "hier-int8|--grad-reduce hierarchical --sites 2 --compress int8"
  "diloco-h10|--sites 2 --outer-steps 10"
  "diloco-h100-int8|--sites 2 --outer-steps 100 --compress int8"
)
# =====

DATA=$WAN_STATE/data
TRAIN_FLAGS=(-c inputs/default.toml --train-data "$DATA/corpus_train.bin" --val-data "$DATA/corpus_val.bin"
  --steps "$STEPS" --val-every 0 --global-batch 16 --log-every 10 --ckpt-dir "$WAN_STATE/ckpt")

. tools/wan/prelude.sh
wan_prelude bench.sh
trap '"$WAN" down' EXIT  # its output shown
FAILED=()

# run NAME CMD... : wan.sh run with a time limit; stdout+stderr to $OUT/NAME.log
run() {
  local name=$1; shift
  echo "  $name"
  if ! timeout "$RUN_TIMEOUT" "$WAN" run "$@" >"$OUT/$name.log" 2>&1; then
    echo "  FAILED: $name (see $OUT/$name.log)"; FAILED+=("$name")
  fi
}

for net in ${NETS:-wan nowan}; do
  if [ "$net" = wan ]; then export DELAY_MS=$WAN_DELAY_MS RATE=$WAN_RATE; else export DELAY_MS=0 RATE=0; fi
  rm -f "$OUT/${net}"_*
  "$WAN" up || die "wan.sh up failed"
  {
    echo "delay_ms=$DELAY_MS rate=$RATE tapestry=$TAPESTRY date=$(date -Is)"
    "$WAN" check
    # shellcheck disable=SC2016  # expanded by each rank
    "$WAN" run sh -c 'echo "rank $OMPI_COMM_WORLD_RANK on $(hostname)"' | sort -n -k2
  } >"$OUT/${net}_net.txt" 2>&1
  cat "$OUT/${net}_net.txt"
  mapping=$(grep -c -e '^rank [01] on siteA$' -e '^rank [23] on siteB$' "$OUT/${net}_net.txt")
  [ "$mapping" = 4 ] || die "ranks are not site-contiguous (0,1 on siteA; 2,3 on siteB): see $OUT/${net}_net.txt"

  # 4-byte latency: back-to-back calls (-n 20) and one call after a barrier (-n 1), 2 sites and 1 site
  for n in 20 1; do
    run "${net}_lat4_cross_n$n" "$TAPESTRY" bench allreduce -b 4 -e 4 -w 3 -n "$n" -o "$OUT/${net}_lat4_cross_n$n.json"
    RUN_SITES=1 run "${net}_lat4_intra_n$n" "$TAPESTRY" bench allreduce -b 4 -e 4 -w 3 -n "$n" -o "$OUT/${net}_lat4_intra_n$n.json"
  done
  for v in "${ALLREDUCE_VARIANTS[@]}"; do
    read -ra flags <<<"${v#*|}"
    run "${net}_allreduce_${v%%|*}" "$TAPESTRY" bench allreduce "${BENCH_ARGS[@]}" "${flags[@]}" \
      -o "$OUT/${net}_allreduce_${v%%|*}.json"
  done
  for v in "${TRAIN_VARIANTS[@]}"; do
    read -ra flags <<<"${v#*|}"
    run "${net}_train_${v%%|*}" "$TAPESTRY" train "${TRAIN_FLAGS[@]}" "${flags[@]}" \
      --metrics-file "$OUT/${net}_train_${v%%|*}.jsonl"
  done
  {   # evidence that the shaping was applied: qdisc counters, then the delay line's own counters
    for s in siteA siteB; do echo "$s wan0 (site -> WAN):"; tc -n "$s" -s qdisc show dev wan0; done
    for s in A B; do echo "wan v$s (WAN -> site$s):"; tc -n wan -s qdisc show dev "v$s"; done
    "$WAN" down
    [ "$DELAY_MS" = 0 ] || cat "$WAN_STATE/delayline.log"
  } >>"$OUT/${net}_net.txt" 2>&1
done

python3 tools/wan/report.py "$OUT" docs/wan.md || die "report.py failed"
((${#FAILED[@]} == 0)) || die "failed runs: ${FAILED[*]}"
