#!/usr/bin/env bash
# The job scripts under a real scheduler: a single-node Slurm from Debian's packages
# (tools/slurm/start.sh), and PBS scripts through Slurm's PBS compatibility (sbatch reads #PBS
# directives; slurm-wlm-torque's qsub) plus a shim that sets the PBS_* variables a PBS server would.
# Usage: slurm_jobs.sh TAPESTRY DATA_DIR WORK_DIR
set -eu
exe=$1 data=$2 work=$3
src=$(cd "$(dirname "$0")/.." && pwd)
fail() { echo "FAIL: $*" >&2; [ -n "${out:-}" ] && [ -f "$out" ] && tail -20 "$out" >&2; exit 1; }
rm -rf "$work" && mkdir -p "$work" && cd "$work"

# ---- bad input first: the scripts refuse to run outside a scheduler, before any work
for s in jobs/slurm/train.sbatch jobs/slurm/scaling.sbatch jobs/slurm/federation.sbatch jobs/pbs/train.pbs \
         jobs/pbs/scaling.pbs jobs/pbs/federation.pbs; do
  msg=$(env -u SLURM_JOB_ID -u PBS_JOBID bash "$src/$s" 2>&1) && fail "$s ran outside a scheduler"
  echo "$msg" | grep -q "not inside a .* job" || fail "$s: unclear message outside a scheduler: $msg"
done
echo "PASS scripts refuse to run outside a scheduler"

# ---- static check of every #PBS block: only directives PBS Pro / Torque know, each script has a walltime
for s in "$src"/jobs/pbs/*.pbs; do
  grep -q '^#PBS -l walltime=[0-9][0-9]:[0-9][0-9]:[0-9][0-9]$' "$s" || fail "$s: no walltime"
  grep -q '^#PBS -l select=[0-9]*:ncpus=[0-9]*:mpiprocs=[0-9]*$' "$s" || fail "$s: no select= resource"
  bad=$(grep '^#PBS' "$s" | grep -v -E '^#PBS -(N [A-Za-z0-9_-]+|l (select|walltime|nodes)=[^ ]+|j oe|o [^ ]+|e [^ ]+|A [^ ]+|q [^ ]+|V)$' || true)
  [ -z "$bad" ] || fail "$s: unknown #PBS directive(s): $bad"
done
echo "PASS #PBS blocks"

# Start Slurm unless it runs already; stop it at the end if this script started it.
D=${TAPESTRY_SLURM_DIR:-/tmp/tapestry-slurm}
if ! { [ -s "$D/run/slurmctld.pid" ] && kill -0 "$(cat "$D/run/slurmctld.pid")" 2>/dev/null; }; then
  stop_slurm=1
  trap '"$src/tools/slurm/stop.sh"' EXIT
fi
eval "$("$src/tools/slurm/start.sh" | tail -1)"  # export SLURM_CONF=...
export SLURM_CONF
wait_job() { while [ -n "$(squeue -h -j "$1" 2>/dev/null)" ]; do sleep 0.3; done; }
state() { scontrol -o show job "$1" | grep -o 'JobState=[A-Z]*' ; }
common="--batch-size 4 --train-data $data/corpus_train.bin --val-data $data/corpus_val.bin --log-every 1"
export TAPESTRY_HOME=$src TAPESTRY_BIN=$exe

# ---- 1. train.sbatch, 2 ranks under srun/PMIx: trains, checkpoints, finishes
jid=$(TAPESTRY_ARGS="$common --steps 6 --val-every 3" TAPESTRY_SAVE_EVERY=3 sbatch --parsable --ntasks=2 "$src/jobs/slurm/train.sbatch")
wait_job "$jid"; out=tapestry-$jid.out
[ "$(state "$jid")" = JobState=COMPLETED ] || fail "job $jid: $(state "$jid")"
grep -q "dp=2 x pp=1 x tp=1 (2 ranks)" "$out" || fail "job $jid did not run 2 DP ranks"
grep -q "step     6/6 | loss" "$out" || fail "job $jid did not train 6 steps"
grep -q "train.sbatch: training finished" "$out" || fail "job $jid did not finish"
"$exe" ckpt verify checkpoints/step_00000006.h5 > /dev/null || fail "job $jid: checkpoint does not verify"
echo "PASS train.sbatch: 2 ranks, 6 steps, checkpoint verifies"

# ---- 2. the time-limit signal: save, exit 0, resubmit; the next job resumes and finishes
rm -rf checkpoints
jid=$(TAPESTRY_ARGS="$common --steps 40 --val-every 0" TAPESTRY_RESUBMIT=1 sbatch --parsable --ntasks=2 --time=00:07:00 \
  "$src/jobs/slurm/train.sbatch")
out=tapestry-$jid.out
for _ in $(seq 300); do grep -q "step     3/40" "$out" 2>/dev/null && break; sleep 0.1; done
scancel --signal=USR1 "$jid"   # what --signal=USR1@120 sends before the limit
wait_job "$jid"
[ "$(state "$jid")" = JobState=COMPLETED ] || fail "signalled job $jid: $(state "$jid")"
grep -q "stop signal received: saved at step" "$out" || fail "job $jid did not save on the signal"
step=$(sed -n 's/.*saved at step \([0-9]*\), exiting.*/\1/p' "$out")
next=$(sed -n 's/.*resubmitted as job \([0-9]*\).*/\1/p' "$out")
[ -n "$next" ] || fail "job $jid did not resubmit itself"
limit=$(scontrol -o show job "$next" | grep -o 'TimeLimit=[^ ]*')
[ "$limit" = TimeLimit=00:07:00 ] || fail "job $next was resubmitted with $limit, not the --time=00:07:00 of job $jid"
wait_job "$next"; out=tapestry-$next.out
grep -q "resumed from checkpoints/step_$(printf %08d "$step").h5 at step $step" "$out" || fail "job $next did not resume at step $step"
grep -q "step    40/40 | loss" "$out" || fail "job $next did not finish training"
echo "PASS train.sbatch: signal at step $step -> saved, resubmitted as $next with the same time limit, resumed, finished"

# ---- 3. PBS script through Slurm's PBS compatibility: sbatch reads the #PBS block
rm -rf checkpoints
jid=$(TAPESTRY_ARGS="$common --steps 4 --val-every 0" TAPESTRY_SAVE_EVERY=4 sbatch --parsable "$src/jobs/pbs/train.pbs")
wait_job "$jid"; out=$(ls -t slurm-"$jid".out tapestry.o"$jid" 2>/dev/null | head -1 || true)
[ -n "$out" ] || out=slurm-$jid.out
grep -q "train.pbs: job $jid, 2 ranks" "$out" || fail "PBS job $jid: wrong start"
grep -q "step     4/4 | loss" "$out" || fail "PBS job $jid did not train"
grep -q "train.pbs: training finished" "$out" || fail "PBS job $jid did not finish"
echo "PASS train.pbs via sbatch (PBS_NODEFILE from generate_pbs_nodefile)"

# ---- 4. the same through the Torque-style qsub wrapper
rm -rf checkpoints
jid=$(TAPESTRY_ARGS="$common --steps 2 --val-every 0" qsub -V "$src/jobs/pbs/train.pbs")
wait_job "$jid"; out=train.pbs.o$jid
grep -q "step     2/2 | loss" "$out" || fail "qsub job $jid did not train"
echo "PASS train.pbs via qsub"

# ---- 5. shim: the PBS_* variables a PBS server sets, no scheduler behind them
rm -rf checkpoints
printf 'localhost\nlocalhost\n' > nodefile
out=shim.out
sleeps_before=$(pgrep -f "^sleep 3480$" | sort)
env -u SLURM_JOB_ID PBS_JOBID=4242.pbs-server PBS_O_WORKDIR="$work" PBS_NODEFILE="$work/nodefile" \
  TAPESTRY_ARGS="$common --steps 3 --val-every 0" TAPESTRY_WALLTIME=3600 bash "$src/jobs/pbs/train.pbs" > "$out" 2>&1 ||
  fail "PBS shim run failed"
grep -q "train.pbs: job 4242.pbs-server, 2 ranks, tp=1 pp=1, walltime 3600 s" "$out" || fail "shim: wrong start"
grep -q "step     3/3 | loss" "$out" || fail "shim did not train"
sleep 0.5
[ "$(pgrep -f "^sleep 3480$" | sort)" = "$sleeps_before" ] || fail "the time-limit timer's sleep outlived the job"
echo "PASS train.pbs with a PBS environment shim; no timer process left behind"

# ---- 6. fewer ranks than the layout needs: a clear message before any work
jid=$(TAPESTRY_TP=4 TAPESTRY_ARGS="$common --steps 2" sbatch --parsable --ntasks=2 "$src/jobs/slurm/train.sbatch")
wait_job "$jid"; out=tapestry-$jid.out
grep -q "the layout tp=4 x pp=1 needs a multiple of 4 ranks; this job has 2" "$out" || fail "no clear layout message"
grep -q "step" "$out" && fail "training started despite a bad layout"
echo "PASS a layout larger than the job is refused before any work"
# ---- 7. federation.sbatch: two jobs (two sites, one rank each) meet at an ompi-server and train
# as one run; the time-limit signal at one site stops both at the same step, both save and
# resubmit, and the follow-up jobs meet again, resume and finish.
rm -rf checkpoints fedckpt
ompi-server --no-daemonize --report-uri "$work/rendezvous.uri" > ompi-server.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; [ -n "${stop_slurm:-}" ] && "$src/tools/slurm/stop.sh"' EXIT
for _ in $(seq 100); do [ -s rendezvous.uri ] && break; sleep 0.1; done
fed_env() { echo "ALL,TAPESTRY_FEDERATION=slurmfed,TAPESTRY_SITE_ID=$1,TAPESTRY_SITES=2,TAPESTRY_RENDEZVOUS=$work/rendezvous.uri,TAPESTRY_FEDERATION_TIMEOUT=120,TAPESTRY_CKPT_DIR=fedckpt,TAPESTRY_RESUBMIT=1"; }
export TAPESTRY_ARGS="$common --steps 30 --val-every 0 --outer-steps 5 --compress int8"
j0=$(sbatch --parsable --ntasks=1 --export="$(fed_env 0)" "$src/jobs/slurm/federation.sbatch")
j1=$(sbatch --parsable --ntasks=1 --export="$(fed_env 1)" "$src/jobs/slurm/federation.sbatch")
out=tapestry-site-$j0.out
for _ in $(seq 600); do grep -q "step     3/30" "$out" 2>/dev/null && break; sleep 0.1; done
grep -q "federation 'slurmfed': joined as site 0 of 2 (1 of 2 ranks)" "$out" || fail "site 0 did not join"
grep -q "federation 'slurmfed': joined as site 1 of 2 (1 of 2 ranks)" "tapestry-site-$j1.out" || { out=tapestry-site-$j1.out; fail "site 1 did not join"; }
scancel --batch --signal=USR1 "$j1"   # what --signal=B:USR1@180 sends at one site
wait_job "$j0"; wait_job "$j1"
unset TAPESTRY_ARGS
for j in $j0 $j1; do
  out=tapestry-site-$j.out
  [ "$(state "$j")" = JobState=COMPLETED ] || fail "federated job $j: $(state "$j")"
  grep -q "resubmitted as job" "$out" || fail "federated job $j did not resubmit"
done
step=$(sed -n 's/.*saved at step \([0-9]*\), exiting.*/\1/p' "tapestry-site-$j0.out")
[ -n "$step" ] || { out=tapestry-site-$j0.out; fail "site 0 did not save on the other site's signal"; }
for s in 00 01; do
  "$exe" ckpt verify "fedckpt/site_$s/step_$(printf %08d "$step").h5" > /dev/null || fail "site $s checkpoint does not verify"
done
n0=$(sed -n 's/.*resubmitted as job \([0-9]*\).*/\1/p' "tapestry-site-$j0.out")
n1=$(sed -n 's/.*resubmitted as job \([0-9]*\).*/\1/p' "tapestry-site-$j1.out")
wait_job "$n0"; wait_job "$n1"; out=tapestry-site-$n0.out
grep -q "resumed from fedckpt/site_00/step_$(printf %08d "$step").h5 at step $step" "$out" || fail "site 0 did not resume"
grep -q "step    30/30 | loss" "$out" || fail "the resumed federated run did not finish"
grep -q "federation.sbatch: training finished" "tapestry-site-$n1.out" || { out=tapestry-site-$n1.out; fail "site 1 did not finish"; }
echo "PASS federation.sbatch: 2 sites joined; a signal at site 1 stopped both at step $step; both saved, resubmitted, met again, resumed, finished"

# ---- 8. federation.pbs with the PBS shim (two sites, two shells) and a missing parameter
printf 'localhost\n' > nodefile1
sleeps_before=$(pgrep -f "^sleep 3420$" | sort)
pbs_pids=()
for s in 0 1; do
  env -u SLURM_JOB_ID PBS_JOBID=77$s.pbs PBS_O_WORKDIR="$work" PBS_NODEFILE="$work/nodefile1" TAPESTRY_WALLTIME=3600 \
    TAPESTRY_FEDERATION=pbsfed TAPESTRY_SITE_ID=$s TAPESTRY_SITES=2 TAPESTRY_RENDEZVOUS="$work/rendezvous.uri" \
    TAPESTRY_CKPT_DIR=pbsckpt TAPESTRY_ARGS="$common --steps 3 --val-every 0" bash "$src/jobs/pbs/federation.pbs" \
    > pbsfed$s.out 2>&1 &
  pbs_pids+=($!)
done
wait "${pbs_pids[@]}" || true
out=pbsfed0.out
grep -q "joined as site 0 of 2" "$out" && grep -q "step     3/3 | loss" "$out" || fail "federation.pbs site 0"
grep -q "federation.pbs: training finished" pbsfed1.out || { out=pbsfed1.out; fail "federation.pbs site 1"; }
sleep 0.5
[ "$(pgrep -f "^sleep 3420$" | sort)" = "$sleeps_before" ] || fail "federation.pbs: the time-limit timer's sleep outlived the job"
msg=$(env -u SLURM_JOB_ID -u TAPESTRY_FEDERATION PBS_JOBID=1 bash "$src/jobs/pbs/federation.pbs" 2>&1) &&
  fail "federation.pbs ran without TAPESTRY_FEDERATION"
echo "$msg" | grep -q "TAPESTRY_FEDERATION is not set" || fail "unclear message: $msg"
echo "PASS federation.pbs with the PBS shim; a missing parameter is refused"
echo "all scheduler checks passed"
