#!/usr/bin/env bash
# Checkpoints as a user and a batch system meet them. Usage: ckpt_cli.sh MODE TAPESTRY DATA_DIR WORK_DIR
#   signal     SIGUSR1 / SIGTERM mid-run: save at the next step, exit 0; --resume auto continues
#   kill       SIGKILL at random moments while saving every step in the background: at least one
#              kill lands during a background write; the last good checkpoint still verifies and
#              resumes; a cut-short write never becomes `latest`
#   inspect    h5ls -r, h5dump -A, ckpt info, the h5py example, ckpt export -> --init-from
set -eu  # no pipefail: `cmd | grep -q` may end cmd early
mode=$1 exe=$2 data=$3 work=$4
src=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$work" && mkdir -p "$work" && cd "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }
train=("$exe" train -c "$src/inputs/default.toml" --train-data "$data/corpus_train.bin" --val-every 0 --log-every 1
       --metrics-file metrics.jsonl)

case "$mode" in
signal)
  for sig in USR1 TERM; do
    rm -rf checkpoints out.txt
    "${train[@]}" --steps 100000 > out.txt 2>&1 &
    pid=$!
    for _ in $(seq 100); do grep -q "step     3/" out.txt && break; sleep 0.1; done
    kill -"$sig" $pid
    rc=0; wait $pid || rc=$?
    [ $rc -eq 0 ] || fail "SIG$sig: exit $rc: $(tail -3 out.txt)"
    grep -q "stop signal received: saved at step" out.txt || fail "SIG$sig: no save message"
    step=$(sed -n 's/.*saved at step \([0-9]*\).*/\1/p' out.txt)
    "$exe" ckpt verify "checkpoints/$(cat checkpoints/latest)" || fail "SIG$sig: checkpoint does not verify"
    "${train[@]}" --steps $((step + 2)) --resume auto > out2.txt 2>&1 || fail "resume failed: $(tail -3 out2.txt)"
    grep -q "resumed from checkpoints/step_$(printf %08d "$step").h5 at step $step" out2.txt || fail "did not resume at $step"
    grep -q "step $(printf %5d $((step + 2)))/$((step + 2)) | loss" out2.txt || fail "resumed run did not finish"
    echo "SIG$sig: saved at step $step, exit 0, resumed"
  done
  ;;
kill)
  # A model big enough that a save takes a noticeable time; save every step.
  big=(--n-layer 4 --n-head 4 --d-model 256 --save-every 1 --keep 2 --steps 100000)
  # Saves run in the background (the default): a kill that lands while the last "saving ... in the
  # background" has no "saved" yet and its .tmp exists cut a background write short. At least one
  # of up to 12 attempts must do so.
  cut_short=0 in_background=0 attempt=0
  while [ $attempt -lt 6 ] || { [ $in_background = 0 ] && [ $attempt -lt 12 ]; }; do
    attempt=$((attempt + 1))
    "${train[@]}" "${big[@]}" --resume auto > out.txt 2>&1 &
    pid=$!
    for _ in $(seq 200); do grep -q "saved checkpoint" out.txt && break; sleep 0.05; done
    sleep "0.$((RANDOM % 10))"
    kill -9 $pid; wait $pid 2>/dev/null || true
    grep -q "in the background (training stalled" out.txt || fail "attempt $attempt: saves did not run in the background"
    ls checkpoints/*.tmp >/dev/null 2>&1 && cut_short=$((cut_short + 1))
    last=$(grep -E "^sav(ing|ed) checkpoint" out.txt | tail -1)
    case "$last" in
      "saving checkpoint "*) f=$(echo "$last" | sed 's/^saving checkpoint \([^ ]*\) .*/\1/')
        [ -f "$f.tmp" ] && in_background=$((in_background + 1)) ;;
    esac
    latest="checkpoints/$(cat checkpoints/latest)"
    "$exe" ckpt verify "$latest" > /dev/null || fail "attempt $attempt: latest ($latest) does not verify"
    echo "attempt $attempt: killed; $(ls checkpoints/*.tmp 2>/dev/null | wc -l) cut-short file(s); last line '$last'; latest $latest verifies"
  done
  [ $in_background -ge 1 ] || fail "no kill landed during a background write in $attempt attempts"
  # and the run resumes from it
  step=$(sed 's/step_0*\([0-9]*\)\.h5/\1/' checkpoints/latest)
  "${train[@]}" "${big[@]:0:6}" --steps $((step + 1)) --resume auto > out.txt 2>&1 || fail "resume after kill: $(tail -2 out.txt)"
  grep -q "resumed from" out.txt || fail "did not resume"
  echo "killed mid-save in $cut_short of $attempt attempts ($in_background during a background write); every time the previous checkpoint verified and resumed"
  ;;
inspect)
  "${train[@]}" --steps 4 --save-every 4 > out.txt 2>&1 || fail "training failed"
  ck=checkpoints/step_00000004.h5
  h5ls -r "$ck" | grep -q "/model/layers/03/attn/k/weight Dataset {128, 128}" || fail "h5ls -r layout"
  h5dump -A "$ck" | grep -q 'ATTRIBUTE "format_version"' || fail "h5dump -A attributes"
  "$exe" ckpt info "$ck" | grep -q "step 4 of 4" || fail "ckpt info"
  "$exe" ckpt info "$ck" | grep -q "/optimizer/adam_v/final_norm/bias" || fail "ckpt info tensors"
  /usr/bin/python3 "$src/tools/ckpt_to_numpy.py" "$ck" --npz params.npz | grep -q "68 tensors, 858880 parameters" || fail "h5py example"
  "$exe" ckpt export "$ck" -o exported.bin | grep -q "wrote llm.c checkpoint" || fail "ckpt export"
  # the export round-trips: --init-from it, 0 steps, --export-llmc again: the same bytes
  "${train[@]}" --steps 0 --init-from exported.bin --export-llmc again.bin > init.txt 2>&1 || fail "init-from export"
  cmp exported.bin again.bin || fail "llm.c export does not round-trip through --init-from"
  a="bit-identical round trip"
  echo "h5ls, h5dump, ckpt info, h5py, export -> init-from: OK ($a)"
  ;;
*) fail "unknown mode $mode" ;;
esac
