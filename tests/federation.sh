#!/usr/bin/env bash
# Federation: two separately started mpirun jobs (two "sites") join one run through ompi-server.
# Usage: federation.sh MODE TAPESTRY MPIRUN DATA_DIR WORK_DIR
#   match      2 jobs x 2 ranks, hierarchical all-reduce, then DiLoCo (H=5, int8): the losses of
#              one 4-rank job with --sites 2, step for step (relative 1e-6)
#   resume     federated DiLoCo saving at step 6, each site's 2 ranks as ZeRO-1 shards and then as a
#              tp 2 pair: each site writes its own checkpoint (ckpt_*/site_NN); the federated run
#              resumed from them repeats steps 7-12 bitwise
#   mismatch   sites with different model configs: one error line naming the difference in each
#              job's output, both exit non-zero
#   unequal    sites of 2 and 1 ranks: one clear error in each job, both exit non-zero
#   died       site 1's job is SIGKILLed mid-run: site 0 saves its state, prints one line and exits
#              non-zero within the federation timeout
#   timeout    no rendezvous (mpirun without --ompi-server): each job ends with one error line
#              after --federation-timeout, non-zero, no hang
#   elastic_match   elastic federation (--federation-peers: the sites' first ranks over TCP, no
#              ompi-server), 2 jobs x 2 ranks, DiLoCo H=5 int4 and fp32, Streaming DiLoCo on its
#              thread: the training losses of one 4-rank job with --sites 2, step for step
#              (relative 1e-6); a 3x slower site under --outer-quota skips steps
#   elastic_rejoin  elastic federation, 2 jobs x 2 ranks: site 1's job is SIGKILLed mid-run; site 0
#              drops it and loses no step; site 1 restarted with --resume auto rejoins at an outer
#              boundary with site 0's state; both finish, with bitwise equal parameters and outer
#              state after the last outer step; the checkpoint names the sites of each exchange
set -eu
mode=$1 exe=$2 mpirun=$3 data=$4 work=$5
src=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$work" && mkdir -p "$work" && cd "$work"
fail() { echo "FAIL: $*" >&2; tail -5 ./*.log >&2 || true; exit 1; }
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT
start_server() {
  ompi-server --no-daemonize --report-uri uri > server.log 2>&1 &
  server=$!
  for _ in $(seq 100); do [ -s uri ] && return; sleep 0.1; done
  fail "ompi-server did not write its URI"
}
export OPENBLAS_NUM_THREADS=1
train=(train -c "$src/inputs/default.toml" --train-data "$data/corpus_train.bin" --val-data "$data/corpus_val.bin"
       --batch-size 2 --steps 12 --val-every 6 --val-batches 2 --log-every 1 --sites 2 --federation-timeout 60)
# fed NAME NP0 NP1 [args...]: site 0 and site 1 as two mpirun jobs; exit codes in rc0, rc1.
fed() {
  local name=$1 np0=$2 np1=$3; shift 3
  local srv=(); [ -f uri ] && srv=(--ompi-server file:uri)
  $mpirun "${srv[@]}" -np "$np0" "$exe" "${train[@]}" --federation "$name" --site-id 0 "$@" ${SITE0_ARGS:-} \
    > "$name.site0.log" 2>&1 &
  local p0=$!
  rc1=0; $mpirun "${srv[@]}" -np "$np1" "$exe" "${train[@]}" --federation "$name" --site-id 1 "$@" ${SITE1_ARGS:-} \
    > "$name.site1.log" 2>&1 || rc1=$?
  rc0=0; wait $p0 || rc0=$?
}
# free_port: a TCP port nobody listens on now.
free_port() { /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# same_losses A.jsonl B.jsonl [train]: every step's training loss (and every validation loss, unless
# "train") within 1e-6.
same_losses() {
  /usr/bin/python3 - "$1" "$2" "${3:-all}" <<'PY' || fail "losses differ: $1 vs $2"
import json, sys
a, b = ([json.loads(l) for l in open(f)] for f in sys.argv[1:3])
if sys.argv[3] == "train":
    a, b = ([r for r in x if "loss" in r] for x in (a, b))
assert len(a) == len(b) and len(a) > 0, (len(a), len(b))
worst = 0.0
for x, y in zip(a, b):
    k = "loss" if "loss" in x else "val_loss"
    assert x["step"] == y["step"] and k in y
    worst = max(worst, abs(x[k] - y[k]) / abs(x[k]))
print(f"{len(a)} records, largest relative loss difference {worst:.3g}")
assert worst <= 1e-6
PY
}

case "$mode" in
match)
  start_server
  for variant in "hier|--grad-reduce hierarchical" "diloco|--outer-steps 5 --compress int8"; do
    name=${variant%%|*}; read -r -a extra <<< "${variant#*|}"
    $mpirun -np 4 "$exe" "${train[@]}" "${extra[@]}" --metrics-file one_job.jsonl > "$name.one.log" 2>&1 \
      || fail "$name: single job failed"
    SITE0_ARGS="--metrics-file federated.jsonl" fed "$name" 2 2 "${extra[@]}"
    [ "$rc0" = 0 ] && [ "$rc1" = 0 ] || fail "$name: federated jobs exited $rc0 / $rc1"
    grep -q "joined as site 0 of 2 (2 of 4 ranks)" "$name.site0.log" || fail "$name: site 0 did not report joining"
    grep -q "joined as site 1 of 2 (2 of 4 ranks)" "$name.site1.log" || fail "$name: site 1 did not report joining"
    grep -q "2 site(s) x 1 node(s) x 2 rank(s) per node" "$name.site0.log" || fail "$name: topology not printed"
    echo -n "$name: "; same_losses one_job.jsonl federated.jsonl
  done
  ;;
resume)
  start_server
  # Each site's ranks as data-parallel ZeRO-1 shards, then as one tensor-parallel pair.
  for variant in "zero|--zero 1" "tp|--tp 2"; do
    v=${variant%%|*}; read -r -a layout <<< "${variant#*|}"
    extra=(--outer-steps 4 "${layout[@]}" --ckpt-dir "ckpt_$v" --keep 0)
    SITE0_ARGS="--metrics-file full_$v.jsonl" fed "full_$v" 2 2 "${extra[@]}" --save-every 6
    [ "$rc0" = 0 ] && [ "$rc1" = 0 ] || fail "$v: full run exited $rc0 / $rc1"
    for s in 00 01; do
      "$exe" ckpt verify "ckpt_$v/site_$s/step_00000006.h5" > /dev/null || fail "$v: site $s checkpoint does not verify"
    done
    rm "ckpt_$v"/site_0?/step_00000012.h5
    echo step_00000006.h5 > "ckpt_$v/site_00/latest"; echo step_00000006.h5 > "ckpt_$v/site_01/latest"
    SITE0_ARGS="--metrics-file resumed_$v.jsonl" fed "resumed_$v" 2 2 "${extra[@]}" --resume auto
    [ "$rc0" = 0 ] && [ "$rc1" = 0 ] || fail "$v: resumed run exited $rc0 / $rc1"
    grep -q "resumed from ckpt_$v/site_00/step_00000006.h5 at step 6" "resumed_$v.site0.log" || fail "$v: did not resume at step 6"
    /usr/bin/python3 - "full_$v.jsonl" "resumed_$v.jsonl" "$v" <<'PY' || fail "$v: resumed losses differ"
import json, sys
full = {(r["step"], "loss" in r): r for r in map(json.loads, open(sys.argv[1]))}
res = [json.loads(l) for l in open(sys.argv[2])]
assert len(res) >= 6
for r in res:
    k = "loss" if "loss" in r else "val_loss"
    assert r[k] == full[(r["step"], k == "loss")][k], r
print(f"resumed ({sys.argv[3]}): {len(res)} records after step 6 equal the uninterrupted run bitwise")
PY
  done
  # One site's checkpoint missing: a clear error, not a silent restart from scratch
  rm ckpt_zero/site_01/latest
  fed gap 2 2 --outer-steps 4 --zero 1 --ckpt-dir ckpt_zero --keep 0 --resume auto
  [ "$rc0" != 0 ] && [ "$rc1" != 0 ] || fail "resume with one site's checkpoint missing exited $rc0 / $rc1"
  grep -q "ranks would resume from different steps (0 and 6)" gap.site0.log || fail "no clear error for a missing site checkpoint"
  ;;
mismatch)
  start_server
  SITE1_ARGS="--n-layer 2" fed mismatch 2 2
  for s in 0 1; do
    log=mismatch.site$s.log
    [ "$(eval echo \$rc$s)" != 0 ] || fail "site $s exited 0"
    [ "$(grep -c "tapestry: error:" $log)" = 1 ] || fail "site $s: not exactly one error line"
    grep -q "error: federation 'mismatch': site 1's config differs: L=2 (site 0: L=4)" $log || fail "site $s: message"
  done
  echo "mismatch: one error line per site, both exit non-zero"
  ;;
unequal)
  start_server
  fed unequal 2 1
  for s in 0 1; do
    [ "$(eval echo \$rc$s)" != 0 ] || fail "site $s exited 0"
    [ "$(grep -c "tapestry: error:" unequal.site$s.log)" = 1 ] || fail "site $s: not exactly one error line"
    grep -q "has 1 ranks but site 0 has 2 (sites must be the same size)" unequal.site$s.log || fail "site $s: message"
  done
  echo "unequal: one error line per site, both exit non-zero"
  ;;
timeout)
  start=$(date +%s)
  SITE0_ARGS="--federation-timeout 5" SITE1_ARGS="--federation-timeout 5" fed lonely 1 1
  took=$(( $(date +%s) - start ))
  for s in 0 1; do
    [ "$(eval echo \$rc$s)" != 0 ] || fail "site $s exited 0"
    [ "$(grep -c "tapestry: error:" lonely.site$s.log)" = 1 ] || fail "site $s: not exactly one error line"
    grep -q "site $s of 2: not all sites joined within 5 s" lonely.site$s.log || fail "site $s: message"
  done
  [ "$took" -lt 40 ] || fail "took $took s"
  echo "timeout: both sites gave up with one error line after ${took} s"
  ;;
died)
  # Site 1's whole job is SIGKILLed mid-run: site 0 must save its own state, print one line and
  # exit non-zero within the federation timeout (plus a margin), not wait forever.
  start_server
  args=(--steps 100000 --val-every 0 --grad-reduce hierarchical --federation-timeout 10 --ckpt-dir ckpt --save-every 0
        --federation died)
  $mpirun --ompi-server file:uri -np 1 "$exe" "${train[@]}" "${args[@]}" --site-id 0 > died.site0.log 2>&1 &
  p0=$!
  setsid $mpirun --ompi-server file:uri -np 1 "$exe" "${train[@]}" "${args[@]}" --site-id 1 > died.site1.log 2>&1 &
  p1=$!
  for _ in $(seq 300); do grep -q "step     5/" died.site0.log && break; sleep 0.1; done
  grep -q "step     5/" died.site0.log || fail "site 0 did not reach step 5"
  kill -9 -- "-$(ps -o pgid= "$p1" | tr -d ' ')" 2>/dev/null || kill -9 "$p1"
  start=$(date +%s)
  rc0=0; wait $p0 || rc0=$?
  took=$(( $(date +%s) - start ))
  [ "$rc0" != 0 ] || fail "site 0 exited 0 after site 1 died"
  [ "$took" -lt 40 ] || fail "site 0 took $took s to stop"
  [ "$(grep -c "tapestry: error:" died.site0.log)" = 1 ] || fail "site 0: not exactly one error line: $(grep error died.site0.log)"
  line=$(grep "tapestry: error:" died.site0.log)
  echo "$line" | grep -q "federation 'died': no step completed across sites for 10 s" || fail "site 0: message: $line"
  ck=$(echo "$line" | sed -n "s/.*saved this site's state at step \([0-9]*\) to \([^;]*\);.*/\2/p")
  [ -n "$ck" ] || fail "site 0 did not save its state: $line"
  "$exe" ckpt verify "$ck" > /dev/null || fail "site 0's last checkpoint $ck does not verify"
  [ "ckpt/site_00/$(cat ckpt/site_00/latest)" = "$ck" ] || fail "latest does not point at $ck"
  echo "died: site 0 stopped ${took} s after site 1 was killed, with one line; its state $ck verifies"
  ;;
elastic_match)
  for variant in "diloco|--outer-steps 5 --compress int4" "fp32|--outer-steps 5" \
                 "stream|--outer-steps 6 --outer-fragments 3 --outer-delay 2 --compress int4"; do
    name=${variant%%|*}; read -r -a extra <<< "${variant#*|}"
    peers=127.0.0.1:$(free_port),127.0.0.1:$(free_port)
    $mpirun -np 4 "$exe" "${train[@]}" "${extra[@]}" --metrics-file "one_$name.jsonl" > "$name.one.log" 2>&1 \
      || fail "$name: single job failed"
    SITE0_ARGS="--metrics-file elastic_$name.jsonl" fed "$name" 2 2 "${extra[@]}" --federation-peers "$peers"
    [ "$rc0" = 0 ] && [ "$rc1" = 0 ] || fail "$name: elastic jobs exited $rc0 / $rc1"
    for s in 0 1; do
      grep -q "federation '$name': site $s of 2, elastic (this job's 2 rank(s)" "$name.site$s.log" || fail "site $s: no elastic line"
      grep -q "site $s of 2 (elastic federation: the others over TCP) x 1 node(s) x 2 rank(s) per node" "$name.site$s.log" \
        || fail "$name: site $s: topology not printed"
    done
    grep -q "outer step of fragment [0-9] (sent after step [0-9]*) sums sites 0,1" "$name.site0.log" || fail "$name: contributors not logged"
    # Validation differs by design: each elastic site evaluates its own model; the single job both.
    echo -n "elastic $name: "; same_losses "one_$name.jsonl" "elastic_$name.jsonl" train
  done
  # Stragglers: site 1 three times slower under --outer-quota skips steps; both finish.
  peers=127.0.0.1:$(free_port),127.0.0.1:$(free_port)
  fed quota 1 1 --outer-steps 5 --compress int4 --outer-quota true --emulate-slow-site 1 --emulate-slow-factor 3 \
    --federation-peers "$peers"
  [ "$rc0" = 0 ] && [ "$rc1" = 0 ] || fail "quota: elastic jobs exited $rc0 / $rc1"
  grep -q "skipped (pace)" quota.site1.log || fail "quota: the slow site skipped no step"
  ! grep -q "skipped (pace)" quota.site0.log || fail "quota: the fast site skipped a step"
  grep -q "outer merge of fragment 0 (sent after step 10): per site weight .* site 1: " quota.site0.log \
    || fail "quota: merges not weighted by site"
  echo "elastic quota: site 1 skipped $(grep -c "skipped (pace)" quota.site1.log) of 12 steps"
  ;;
elastic_rejoin)
  peers=127.0.0.1:$(free_port),127.0.0.1:$(free_port)
  args=(--steps 240 --val-every 0 --outer-steps 5 --compress int4 --ckpt-dir ckpt --save-every 10 --keep 0
        --federation elastic --federation-peers "$peers" --federation-timeout 30)
  $mpirun -np 2 "$exe" "${train[@]}" "${args[@]}" --site-id 0 --metrics-file site0.jsonl > site0.log 2>&1 &
  p0=$!
  setsid $mpirun -np 2 "$exe" "${train[@]}" "${args[@]}" --site-id 1 > site1.log 2>&1 &
  p1=$!
  for _ in $(seq 600); do grep -q "step    22/" site1.log && break; sleep 0.05; done
  grep -q "step    22/" site1.log || fail "site 1 did not reach step 22"
  kill -9 -- "-$(ps -o pgid= "$p1" | tr -d ' ')" 2>/dev/null || kill -9 "$p1"
  wait "$p1" 2>/dev/null || true
  rc1=0; $mpirun -np 2 "$exe" "${train[@]}" "${args[@]}" --site-id 1 --resume auto > site1b.log 2>&1 || rc1=$?
  rc0=0; wait $p0 || rc0=$?
  [ "$rc0" = 0 ] && [ "$rc1" = 0 ] || fail "site 0 exited $rc0, restarted site 1 exited $rc1"
  for log in site0.log site1b.log; do
    ! grep -q "tapestry: error" $log || fail "$log: $(grep "tapestry: error" $log)"
  done
  grep -Eq "federation 'elastic' \(site 0\): site 1 dropped \((connection (closed|lost: )|its job restarted)" site0.log || fail "site 0 did not drop site 1"
  joined=$(sed -n "s/.*federation 'elastic' (site 0): site 1 admitted at step \([0-9]*\) (it takes the state of site 0).*/\1/p" site0.log)
  [ -n "$joined" ] || fail "site 0 did not admit site 1"
  grep -q "federation 'elastic' (site 1): rejoined at step $joined with the state of site 0 (2 site(s) now)" site1b.log \
    || fail "site 1 did not report rejoining at step $joined"
  grep -q "resumed from ckpt/site_01/step_000000[12]0.h5 at step [12]0, then rejoined the federation at step $joined" site1b.log \
    || fail "site 1 did not resume from its checkpoint: $(grep resumed site1b.log)"
  grep -q "(sent after step $((joined + 5))) sums sites 0,1" site0.log || fail "site 1 did not contribute after rejoining"
  /usr/bin/python3 - "$joined" <<'PY' || fail "after the rejoin"
import json, sys
import h5py, numpy as np
joined = int(sys.argv[1])
steps = [r["step"] for r in map(json.loads, open("site0.jsonl")) if "loss" in r]
assert steps == list(range(1, 241)), "site 0 lost steps"
a, b = (h5py.File(f"ckpt/site_0{s}/step_00000240.h5", "r") for s in (0, 1))
names = []
a.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and (n.startswith("model/") or "diloco/outer/" in n) else None)
assert len(names) > 10 and any("outer" in n for n in names), names
worst = max(float(np.max(np.abs(a[n][()] - b[n][()]))) for n in names)
assert worst == 0.0, f"sites differ by {worst}"
log = a["diloco"].attrs["outer_contributors"].decode()
assert ":0;" in log and log.endswith(f"{joined + 5}:0,1"), log
print(f"elastic_rejoin: site 0 computed steps 1-240; site 1 rejoined at step {joined}; {len(names)} parameter and "
      f"outer tensors bitwise equal at step 240; contributors {log}")
PY
  ;;
*) fail "unknown mode $mode" ;;
esac
