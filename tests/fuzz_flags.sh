#!/usr/bin/env bash
# Every numeric flag of `train`, `plan`, `data prepare`, `bench step` and `bench gemm`, read from --help, given 0, -1 and a huge
# value on top of a small valid command. Each run must end in one of three ways: exit 0 (the
# value is valid), still running after 3 seconds (valid and long, e.g. --steps 2147483647;
# stopped here), or exactly one line `tapestry: error: ...` on stderr with an exit status of 1-100.
# A crash (signal, abort), a multi-line error or an internal error fails the test.
# Runs go 4 at a time, each in its own folder: a run mostly waits on MPI's start-up, not the CPU.
# Each base command must succeed on its own (checked first), so that the flags are what fails.
#   tests/fuzz_flags.sh TAPESTRY DATA_DIR WORK_DIR
set -uo pipefail
exe=$(realpath "$1")
data=$(realpath "$2")
work=$3
src=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$work" && mkdir -p "$work" && cd "$work"
base_train=(train --train-data "$data/corpus_train.bin" --val-data "$data/corpus_val.bin" --val-every 1 --val-batches 1
            --steps 1 -b 1 -t 8 --n-layer 1 --n-head 2 --d-model 16 --log-every 1 --ckpt-dir ck --metrics-file m.jsonl)
base_plan=(plan --model tiny-llama -t 64)
base_prepare=(data prepare "$src/inputs/corpus/licenses.txt" -o out)
base_step=(bench step --n-layer 1 --n-head 2 --d-model 16 --vocab-size 64 --max-seq-len 16 -b 1 -t 8 --warmup 0 --iters 1)
base_gemm=(bench gemm --size 8 --iters 1)
flags_of() { "$exe" "$@" --help | grep -oE -- '--[a-z0-9-]+ (INT|UINT|FLOAT)' | sort -u; }
# one run: the file holding its command line (shell-quoted); it runs in a folder of that name
# minus ".cmd" and prints a FAIL block or nothing
one_run() {
  local dir=${1%.cmd} rc lines
  eval "set -- $(cat "$1")"
  mkdir -p "$dir" && cd "$dir" || { echo "FAIL: cannot make $dir"; return; }
  timeout -s KILL 3 "$exe" "$@" > out.log 2> err.log
  rc=$?
  lines=$(grep -c . err.log)
  if [ $rc -eq 0 ] || [ $rc -eq 137 ]; then return; fi
  if [ $rc -le 100 ] && [ "$lines" -eq 1 ] && grep -q "^tapestry: error: " err.log; then return; fi
  echo "FAIL: tapestry $*: exit $rc, stderr:"
  head -5 err.log | sed 's/^/    /'
}
export -f one_run
export exe
# Not OMPI_MCA_ess_singleton_isolated=1 (faster starts, 94 -> 59 s): lone ranks without Open MPI's
# daemon share one session folder name, and two runs at once then race to create it ("mkdir ...
# /tmp/ompi.<host>.0/jf.0: File exists"), which failed this test once.
runs=0
# Each base command must itself succeed: one that fails makes every run of its flags end in the
# same error line, and the flags would go untested.
for cmd in train plan prepare step gemm; do
  declare -n b="base_$cmd"
  mkdir -p "base_$cmd"
  if ! (cd "base_$cmd" && timeout -s KILL 60 "$exe" "${b[@]}" > out.log 2> err.log); then
    echo "fuzz_flags: the base command of $cmd fails: tapestry ${b[*]}"
    head -5 "base_$cmd/err.log"
    exit 1
  fi
  unset -n b
done
for cmd in train plan prepare step gemm; do
  case $cmd in
    train) base=("${base_train[@]}") ; help=(train) ;;
    plan) base=("${base_plan[@]}") ; help=(plan) ;;
    prepare) base=("${base_prepare[@]}") ; help=(data prepare) ;;
    step) base=("${base_step[@]}") ; help=(bench step) ;;
    gemm) base=("${base_gemm[@]}") ; help=(bench gemm) ;;
  esac
  while read -r flag type; do
    [ "$type" = FLOAT ] && huge=1e300 || huge=2147483647
    for v in 0 -1 "$huge"; do
      runs=$((runs + 1))
      printf '%q ' "${base[@]}" "$flag" "$v" > "run$runs.cmd"
    done
  done < <(flags_of "${help[@]}")
done
[ $runs -gt 0 ] || { echo "fuzz_flags: no numeric flag found in --help"; exit 1; }
ls run*.cmd | xargs -P 4 -n 1 bash -c 'one_run "$PWD/$0"' > failures.log
cat failures.log
failures=$(grep -c '^FAIL:' failures.log)
echo "fuzz_flags: $runs runs, $failures failures"
[ "$failures" -eq 0 ]
