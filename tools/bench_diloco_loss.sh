#!/usr/bin/env bash
# bench_diloco_loss.sh - final validation loss and cross-site bytes of the cross-site methods after
# the same tokens: the default model and data (inputs/default.toml, 300 steps), 2 ranks = 2 sites,
# global batch 16. No WAN is needed: the losses do not depend on the network. Prints a markdown
# table (cross-site bytes as the run counted them, relative to flat DP's) and keeps the logs and
# metrics in OUT.
#
#   tools/bench_diloco_loss.sh [build/src/tapestry] [OUT=/tmp/diloco_loss]
# About 8 minutes on 2 cores. Env: VARIANTS (a file of "name|flags" lines to run instead).
set -uo pipefail
TAPESTRY=$(realpath -- "${1:-build/src/tapestry}")
OUT=${2:-/tmp/diloco_loss}
cd "$(dirname "$0")/.." || exit 1
mkdir -p "$OUT/data"
"$TAPESTRY" data prepare inputs/corpus/licenses.txt -o "$OUT/data" >/dev/null || { echo "data prepare failed" >&2; exit 1; }
DEFAULT_VARIANTS="flat|--grad-reduce flat
diloco-h100|--outer-steps 100
diloco-h100-int8|--outer-steps 100 --compress int8
diloco-h100-int4|--outer-steps 100 --compress int4
diloco-h100-topk|--outer-steps 100 --compress topk
diloco-h50-int4|--outer-steps 50 --compress int4
stream-h100-p4-d5-int4|--outer-steps 100 --outer-fragments 4 --outer-delay 5 --compress int4
stream-h100-p4-d5-topk|--outer-steps 100 --outer-fragments 4 --outer-delay 5 --compress topk
stream-h50-p4-d5-int4|--outer-steps 50 --outer-fragments 4 --outer-delay 5 --compress int4
stream-h30-p3-d2-topk|--outer-steps 30 --outer-fragments 3 --outer-delay 2 --compress topk"
variants=$(if [ -n "${VARIANTS:-}" ]; then cat "$VARIANTS"; else echo "$DEFAULT_VARIANTS"; fi)
while IFS='|' read -r name flags; do
  [ -z "$name" ] && continue
  read -ra extra <<<"$flags"
  echo "  $name" >&2
  tools/mpirun.sh -np 2 "$TAPESTRY" train -c inputs/default.toml --train-data "$OUT/data/corpus_train.bin" \
    --val-data "$OUT/data/corpus_val.bin" --global-batch 16 --sites 2 --save-every 0 --ckpt-dir "$OUT/ckpt" \
    --metrics-file "$OUT/$name.jsonl" "${extra[@]}" >"$OUT/$name.log" 2>&1 </dev/null || echo "  FAILED: $name" >&2
done <<<"$variants"
python3 - "$OUT" <<'PY'
import json, os, re, sys
out = sys.argv[1]
rows = []
for f in sorted(os.listdir(out)):
    if not f.endswith(".log"): continue
    name = f[:-4]
    log = open(os.path.join(out, f)).read()
    val = re.findall(r"val loss ([0-9.]+)", log)
    n = re.search(r"tapestry train: (\d+) parameters", log)
    if not val or not n: continue
    steps = [json.loads(l) for l in open(os.path.join(out, name + ".jsonl")) if '"loss"' in l]
    mb = sum(s["cross_site_mb"] for s in steps) / len(steps)
    rows.append((name, float(val[-1]), mb, int(n.group(1))))
flat = next((r for r in rows if r[0] == "flat"), None)
print("| variant | final val loss | vs flat DP | cross-site MB/step (all ranks) | fewer bytes than flat DP |")
print("|---|---|---|---|---|")
for name, loss, mb, n in rows:
    rel = f"{100 * (loss / flat[1] - 1):+.1f}%" if flat else "-"
    fewer = f"{flat[2] / mb:.0f}x" if flat and mb > 0 else "-"
    print(f"| {name} | {loss:.4f} | {rel} | {mb:.4f} | {fewer} |")
PY
