#!/usr/bin/env bash
# elastic.sh - issue #19's "a site killed mid-run" on the emulated WAN (tools/wan/wan.sh): two sites,
# each its own mpirun job inside its site's namespace, joined by --federation-peers (TCP between
# the sites' first ranks, no ompi-server). Two runs of the same Streaming DiLoCo config:
#   base   both sites train to the end;
#   kill   site 1's job is SIGKILLed after step KILL_AT and restarted at once with --resume auto;
#          it rejoins at an outer boundary with site 0's state.
# Raw logs and metrics go to docs/wan/elastic/; summary.json and the printed table compare site 0's
# step times before the kill, while alone and after the rejoin, against the base run.
# Root only; tears the sites down on exit. About 3 minutes on 2 cores.
#
# Env: TAPESTRY (build/src/tapestry), DELAY_MS (100), RATE (100mbit), STEPS (200), KILL_AT (50),
# FLAGS (the DiLoCo flags, below), MODEL (extra model flags, e.g. the larger model of streaming.sh:
# "--n-layer 6 --n-head 6 --d-model 384"), OUT (docs/wan/elastic), TIMEOUT (--federation-timeout, 60 s;
# longer than the wait of a restarted site for the next outer boundary).
set -uo pipefail
[ -z "${TAPESTRY:-}" ] || TAPESTRY=$(realpath -- "$TAPESTRY")
cd "$(dirname "$0")/../.." || exit 1
export TAPESTRY=${TAPESTRY:-build/src/tapestry} WAN_STATE=${WAN_STATE:-/tmp/tapestry-wan}
export SITES=2 DELAY_MS=${DELAY_MS:-100} RATE=${RATE:-100mbit} OPENBLAS_NUM_THREADS=1
OUT=${OUT:-docs/wan/elastic} WAN=tools/wan/wan.sh STEPS=${STEPS:-200} KILL_AT=${KILL_AT:-50}
FLAGS=${FLAGS:---outer-steps 20 --outer-fragments 4 --outer-delay 5 --compress int4}
DATA=$WAN_STATE/data CK=$WAN_STATE/elastic_ckpt PORT=5600
. tools/wan/prelude.sh
wan_prelude elastic.sh
((KILL_AT > 10 && KILL_AT % 10 == 0 && KILL_AT < STEPS)) || die "KILL_AT must be a multiple of 10 (the log interval) above 10 (the first 10 steps are left out of the figures) and below STEPS"
"$WAN" up >/dev/null || die "wan.sh up failed"
"$WAN" check >"$OUT/net.txt" 2>&1
echo "delay_ms=$DELAY_MS rate=$RATE steps=$STEPS kill_at=$KILL_AT flags=$FLAGS model=${MODEL:-} date=$(date -Is)" >>"$OUT/net.txt"
read -ra extra <<<"$FLAGS"
read -ra model <<<"${MODEL:-}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# site RUN S [args...]: site S's job in its namespace (site 0: siteA at 10.77.1.1, site 1: siteB).
site() {
  local run=$1 s=$2 ns; shift 2
  ns=site$(printf "\\x$(printf %x $((65 + s)))")
  ip netns exec "$ns" unshare --uts sh -c "hostname $ns; exec \"\$0\" \"\$@\"" \
    mpirun -np 1 --bind-to none --mca mpi_yield_when_idle 1 "$TAPESTRY" train -c inputs/default.toml "${model[@]}" \
    --train-data "$DATA/corpus_train.bin" --val-data "$DATA/corpus_val.bin" --val-every 0 --global-batch 16 \
    --batch-size 8 --steps "$STEPS" --log-every 10 --save-every 10 --keep 0 --ckpt-dir "$CK/$run" --sites 2 \
    "${extra[@]}" --federation "elastic-$run" --federation-peers "10.77.1.1:$PORT,10.77.2.1:$PORT" \
    --federation-timeout "${TIMEOUT:-60}" --site-id "$s" --metrics-file "$OUT/${run}_site$s.jsonl" "$@"
}
for run in base kill; do
  rm -rf "${CK:?}/$run"
  echo "run $run"
  site "$run" 0 >"$OUT/${run}_site0.log" 2>&1 </dev/null &
  p0=$!
  site "$run" 1 >"$OUT/${run}_site1.log" 2>&1 </dev/null &
  p1=$!
  if [ "$run" = kill ]; then
    for _ in $(seq 3000); do grep -q "^step \+$KILL_AT/" "$OUT/kill_site1.log" && break; sleep 0.05; done
    mapfile -t pids < <(ip netns pids siteB)
    kill -9 "${pids[@]}" 2>/dev/null
    wait "$p1"
    echo "killed site 1 at $(date -Is) after: $(grep '^step' "$OUT/kill_site1.log" | tail -1)" >>"$OUT/net.txt"
    mv "$OUT/kill_site1.jsonl" "$OUT/kill_site1_before.jsonl"
    site "$run" 1 --resume auto >"$OUT/kill_site1_after.log" 2>&1 </dev/null || die "restarted site 1 failed"
  else
    wait "$p1" || die "base: site 1 failed"
  fi
  wait "$p0" || die "$run: site 0 failed"
done
python3 - "$OUT" "$STEPS" <<'PY' || die "summary failed"
import json, re, sys
out, steps = sys.argv[1], int(sys.argv[2])
def recs(f):
    return [r for r in map(json.loads, open(f"{out}/{f}")) if "loss" in r]
base, kill = recs("base_site0.jsonl"), recs("kill_site0.jsonl")
log0 = open(f"{out}/kill_site0.log").read()
joined = int(re.search(r"site 1 admitted at step (\d+)", log0).group(1))
dropped = re.search(r"site 1 dropped \(([^)]*)\)", log0).group(1)
killed = len(recs("kill_site1_before.jsonl"))
assert [r["step"] for r in kill] == list(range(1, steps + 1)), "site 0 lost steps"
def window(rs, lo, hi):
    w = [r for r in rs if lo < r["step"] <= hi]
    ms = sorted(r["ms"] for r in w)
    return {"steps": f"{lo + 1}-{hi}", "ms_per_step": sum(ms) / len(w), "median_ms": ms[len(ms) // 2],
            "max_ms": max(r["ms"] for r in w), "xsite_wait_ms": sum(r.get("xsite_wait_ms", 0) for r in w) / len(w)}
s = {"dropped": dropped, "killed_after_step": killed, "rejoined_at": joined,
     "base": {"all": window(base, 10, steps), "final_loss": base[-1]["loss"]},
     "kill": {"before": window(kill, 10, killed), "alone": window(kill, killed, joined - 1),
              "after": window(kill, joined, steps), "all": window(kill, 10, steps), "final_loss": kill[-1]["loss"]},
     "rejoin_step_ms": kill[joined - 1]["ms"]}
json.dump(s, open(f"{out}/summary.json", "w"), indent=1)
print(f"site 1 killed after step {killed}, dropped by site 0 ({dropped}), rejoined at step {joined}")
print("| run | site 0 steps | mean ms/step | median ms/step | largest step (ms) | cross-site wait (ms/step) |")
print("|---|---|---|---|---|---|")
for run, k in (("base", "all"), ("kill", "before"), ("kill", "alone"), ("kill", "after"), ("kill", "all")):
    w = s[run][k]
    print(f"| {run} {k} | {w['steps']} | {w['ms_per_step']:.1f} | {w['median_ms']:.1f} | {w['max_ms']:.1f} | "
          f"{w['xsite_wait_ms']:.1f} |")
print(f"step {joined} at site 0 (admits site 1 and sends it the outer state): {s['rejoin_step_ms']:.1f} ms")
print(f"final training loss at site 0: base {s['base']['final_loss']:.4f}, kill {s['kill']['final_loss']:.4f}")
PY
