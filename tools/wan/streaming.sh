#!/usr/bin/env bash
# streaming.sh - cross-site methods of issue #19 on the emulated WAN (tools/wan/wan.sh), one rank
# per site: flat DP, DiLoCo (blocking, fp32 and int4) and Streaming DiLoCo (4 fragments, merged 5
# steps after sending, int4 and top-k), on the default model and on a larger one whose fp32
# pseudo-gradient takes seconds to send. Every run is made twice: over the WAN (DELAY_MS one-way,
# RATE per site link) and over the same namespaces with no delay and no limit (the cost of an
# exchange without the WAN, which tools/plan_federation.py adds to its network model). Two runs
# make site 1 twice as slow (--emulate-slow-site), without and with --outer-quota. Raw logs
# and metrics go to docs/wan/streaming/, with runs.json (one record per WAN run) for
# `tools/plan_federation.py validate docs/wan/streaming`.
# Root only; tears the sites down on exit. About 25 minutes on 2 busy cores.
#
# Env: TAPESTRY (build/src/tapestry), DELAY_MS (100), RATE (100mbit), SITE_COUNTS ("2 4": 4 sites
# run the default model only), RUN_TIMEOUT (s per run, 900), ONLY (a regex of run names).
set -uo pipefail
[ -z "${TAPESTRY:-}" ] || TAPESTRY=$(realpath -- "$TAPESTRY")
cd "$(dirname "$0")/../.." || exit 1
export TAPESTRY=${TAPESTRY:-build/src/tapestry} WAN_STATE=${WAN_STATE:-/tmp/tapestry-wan}
export RANKS_PER_SITE=1 OPENBLAS_NUM_THREADS=1
OUT=docs/wan/streaming WAN=tools/wan/wan.sh RUN_TIMEOUT=${RUN_TIMEOUT:-900}
WAN_DELAY_MS=${DELAY_MS:-100} WAN_RATE=${RATE:-100mbit}

# ===== runs: "name|steps|flags"; the model is chosen by the name's prefix (default-, large-)
RUNS=(
  "default-flat|30|--grad-reduce flat"
  "default-diloco-h100|200|--outer-steps 100"
  "default-diloco-h100-int4|200|--outer-steps 100 --compress int4"
  "default-stream-h100-p4-d5-int4|200|--outer-steps 100 --outer-fragments 4 --outer-delay 5 --compress int4"
  "default-stream-h100-p4-d5-topk|200|--outer-steps 100 --outer-fragments 4 --outer-delay 5 --compress topk"
  "default-slow2-stream-h100-p4-d5-int4|200|--outer-steps 100 --outer-fragments 4 --outer-delay 5 --compress int4 --emulate-slow-site 1 --emulate-slow-factor 2"
  "default-slow2-quota-stream-h100-p4-d5-int4|200|--outer-steps 100 --outer-fragments 4 --outer-delay 5 --compress int4 --emulate-slow-site 1 --emulate-slow-factor 2 --outer-quota true"
  "large-flat|6|--grad-reduce flat"
  "large-diloco-h100-int4|200|--outer-steps 100 --compress int4"
  "large-stream-h100-p4-d5-int4|200|--outer-steps 100 --outer-fragments 4 --outer-delay 5 --compress int4"
)
LARGE=(--n-layer 6 --n-head 6 --d-model 384)   # 10.9M parameters: 43.6 MB of fp32, 3.5 s at 100 Mbit/s
# =====

DATA=$WAN_STATE/data
. tools/wan/prelude.sh
wan_prelude streaming.sh
FAILED=()
for r in "${RUNS[@]}"; do IFS='|' read -r name steps flags <<<"$r"; echo "$name $flags"; done >"$OUT/flags.txt"

for sites in ${SITE_COUNTS:-2 4}; do
  export SITES=$sites
  for net in wan nowan; do
    if [ "$net" = wan ]; then export DELAY_MS=$WAN_DELAY_MS RATE=$WAN_RATE; else export DELAY_MS=0 RATE=0; fi
    "$WAN" up >/dev/null || die "wan.sh up failed"
    echo "sites=$sites net=$net delay_ms=$DELAY_MS rate=$RATE date=$(date -Is)" >"$OUT/s${sites}_${net}_net.txt"
    "$WAN" check >>"$OUT/s${sites}_${net}_net.txt" 2>&1
    for r in "${RUNS[@]}"; do
      IFS='|' read -r name steps flags <<<"$r"
      [[ $sites == 2 || $name == default-* ]] || continue
      [[ -z ${ONLY:-} || $name =~ $ONLY ]] || continue
      read -ra extra <<<"$flags"
      model=()
      [[ $name == large-* ]] && model=("${LARGE[@]}")
      tag="s${sites}_${net}_${name}"
      echo "  $tag"
      if ! timeout "$RUN_TIMEOUT" "$WAN" run "$TAPESTRY" train -c inputs/default.toml "${model[@]}" \
          --train-data "$DATA/corpus_train.bin" --val-data "$DATA/corpus_val.bin" --val-every 0 \
          --global-batch $((8 * sites)) --batch-size 8 --steps "$steps" --log-every 10 --save-every 0 \
          --ckpt-dir "$WAN_STATE/ckpt" --sites "$sites" "${extra[@]}" --metrics-file "$OUT/$tag.jsonl" \
          >"$OUT/$tag.log" 2>&1 </dev/null; then
        echo "  FAILED: $tag (see $OUT/$tag.log)"; FAILED+=("$tag")
      fi
    done
    "$WAN" down >/dev/null 2>&1
  done
done

python3 tools/wan/streaming_summary.py "$OUT" "$WAN_DELAY_MS" "$WAN_RATE" || die "summary failed"
((${#FAILED[@]} == 0)) || die "failed runs: ${FAILED[*]}"
