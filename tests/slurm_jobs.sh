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
for s in jobs/slurm/train.sbatch jobs/slurm/scaling.sbatch jobs/pbs/train.pbs jobs/pbs/scaling.pbs; do
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
jid=$(TAPESTRY_ARGS="$common --steps 40 --val-every 0" TAPESTRY_RESUBMIT=1 sbatch --parsable --ntasks=2 "$src/jobs/slurm/train.sbatch")
out=tapestry-$jid.out
for _ in $(seq 300); do grep -q "step     3/40" "$out" 2>/dev/null && break; sleep 0.1; done
scancel --signal=USR1 "$jid"   # what --signal=USR1@120 sends before the limit
wait_job "$jid"
[ "$(state "$jid")" = JobState=COMPLETED ] || fail "signalled job $jid: $(state "$jid")"
grep -q "stop signal received: saved at step" "$out" || fail "job $jid did not save on the signal"
step=$(sed -n 's/.*saved at step \([0-9]*\), exiting.*/\1/p' "$out")
next=$(sed -n 's/.*resubmitted as job \([0-9]*\).*/\1/p' "$out")
[ -n "$next" ] || fail "job $jid did not resubmit itself"
wait_job "$next"; out=tapestry-$next.out
grep -q "resumed from checkpoints/step_$(printf %08d "$step").h5 at step $step" "$out" || fail "job $next did not resume at step $step"
grep -q "step    40/40 | loss" "$out" || fail "job $next did not finish training"
echo "PASS train.sbatch: signal at step $step -> saved, resubmitted as $next, resumed, finished"

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
env -u SLURM_JOB_ID PBS_JOBID=4242.pbs-server PBS_O_WORKDIR="$work" PBS_NODEFILE="$work/nodefile" \
  TAPESTRY_ARGS="$common --steps 3 --val-every 0" TAPESTRY_WALLTIME=3600 bash "$src/jobs/pbs/train.pbs" > "$out" 2>&1 ||
  fail "PBS shim run failed"
grep -q "train.pbs: job 4242.pbs-server, 2 ranks, tp=1 pp=1, walltime 3600 s" "$out" || fail "shim: wrong start"
grep -q "step     3/3 | loss" "$out" || fail "shim did not train"
echo "PASS train.pbs with a PBS environment shim"

# ---- 6. fewer ranks than the layout needs: a clear message before any work
jid=$(TAPESTRY_TP=4 TAPESTRY_ARGS="$common --steps 2" sbatch --parsable --ntasks=2 "$src/jobs/slurm/train.sbatch")
wait_job "$jid"; out=tapestry-$jid.out
grep -q "the layout tp=4 x pp=1 needs a multiple of 4 ranks; this job has 2" "$out" || fail "no clear layout message"
grep -q "step" "$out" && fail "training started despite a bad layout"
echo "PASS a layout larger than the job is refused before any work"
echo "all scheduler checks passed"
