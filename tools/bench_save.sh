#!/usr/bin/env bash
# Checkpoint saves during training (docs/performance.md, "Checkpoints"): S1 (GPT-2 124M shapes,
# B=4, T=64) on 1 rank, one save at step SAVE_AT, written synchronously and then in the background.
# Prints per run: the training stall of the save, the save's own time, the mean step time before
# the save and while the background write ran, and the peak resident memory against the model
# state (parameters + AdamW m, v). Then a resume of that checkpoint with tp 2 and with pp 2 on
# 2 ranks: each rank's peak memory against its part of the model state.
# Usage: tools/bench_save.sh [BUILD_DIR] [CKPT_DIR]
set -eu
build=${1:-build} dir=${2:-/tmp/bench_save}
src=$(cd "$(dirname "$0")/.." && pwd)
exe="$build/src/tapestry"
data="$build/tests/cli_data/corpus_train.bin"
[ -f "$data" ] || { echo "needs $data (run the tests once)" >&2; exit 1; }
S1=(--n-layer 12 --n-head 12 --d-model 768 --vocab-size 50257 --max-seq-len 1024 -b 4 -t 64 --lr 1e-4)
steps=${STEPS:-24} save_at=${SAVE_AT:-8}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-2}
echo "# $(date -u +%FT%TZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores;" \
     "flags: $(grep -m1 -o -w -E 'avx512f|avx512_bf16|avx2' /proc/cpuinfo | sort -u | xargs)"
echo "# disk: $(dd if=/dev/zero of="$dir.dd" bs=16M count=96 conv=fdatasync 2>&1 | tail -1)"; rm -f "$dir.dd"
state=$(/usr/bin/python3 -c "print(3 * 4 * 124475904 / 2**30)")
for mode in false true; do
  rm -rf "$dir" && mkdir -p "$dir"
  /usr/bin/time -f "%M" -o "$dir.rss" "$exe" train "${S1[@]}" --train-data "$data" --val-every 0 --steps "$steps" \
    --save-every "$save_at" --keep 0 --async-save $mode --ckpt-dir "$dir" --log-every 1 --metrics-file "$dir.jsonl" \
    > "$dir.log" 2>&1 || { tail -3 "$dir.log"; exit 1; }
  /usr/bin/python3 - "$dir.log" "$dir.jsonl" "$dir.rss" "$mode" "$save_at" "$state" <<'PY'
import json, re, sys
log, metrics, rss, mode, k, state = open(sys.argv[1]).read(), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6])
ms = {r["step"]: r["ms"] for r in map(json.loads, open(metrics)) if "ms" in r}
name = f"step_{k:08d}.h5"
before = [ms[s] for s in range(2, k + 1)]
if mode == "true":
    stall = float(re.search(name + r" in the background \(training stalled ([0-9.]+) s\)", log).group(1))
    took = float(re.search(name + r" \(([0-9.]+) s in the background", log).group(1))
    # the steps that ran while the background write did
    lines = log.splitlines()
    a = next(i for i, l in enumerate(lines) if name + " in the background" in l)
    b = next(i for i, l in enumerate(lines) if name + " (" in l and "saved" in l)
    during = [ms[int(m.group(1))] for l in lines[a:b] for m in [re.match(r"step +(\d+)/", l)] if m]
else:
    stall = took = float(re.search("saved checkpoint .*" + name + r" \(([0-9.]+) s:", log).group(1))
    during = []
mean = lambda x: sum(x) / len(x) if x else float("nan")
extra = sum(d - mean(before) for d in during) / 1e3
print(f"async-save {mode:5s}: stall {stall:6.2f} s, save {took:6.2f} s ({3*4*124475904/1e6/took:.0f} MB/s), "
      f"step {mean(before):.0f} ms before, {mean(during):.0f} ms during the background write "
      f"({len(during)} steps, +{extra:.2f} s in all); peak RSS {int(open(rss).read().split()[-1])/2**20:.2f} GiB, "
      f"model state {state:.2f} GiB")
print("  " + re.search("saved checkpoint .*" + name + r" \((.*)\)", log).group(1))
PY
done
ck="$dir/step_$(printf %08d "$save_at").h5"
for layout in "--tp 2" "--pp 2"; do
  for run in fresh resume; do
    rm -rf "$dir.r" "$dir.rss".*
    from=(); [ $run = resume ] && from=(--resume "$ck")
    # shellcheck disable=SC2086,SC2016
    "$src/tools/mpirun.sh" -np 2 bash -c '/usr/bin/time -f %M -o "$0.$OMPI_COMM_WORLD_RANK" "$@"' "$dir.rss" \
      "$exe" train "${S1[@]}" $layout --train-data "$data" --val-every 0 --steps $((save_at + 1)) "${from[@]}" \
      --ckpt-dir "$dir.r" --save-every 0 --log-every 1 > "$dir.r.log" 2>&1 || { tail -3 "$dir.r.log"; exit 1; }
    echo "$run run with $layout on 2 ranks: peak RSS per rank $(for r in 0 1; do awk '{printf "%.2f ", $1/2^20}' "$dir.rss.$r"; done)GiB" \
         "(each rank's part of the model state: about $(/usr/bin/python3 -c "print(round($state / 2, 2))") GiB)"
  done
done
