#!/usr/bin/env bash
# Tapestry against an independent numpy implementation (tools/model_ref.py, HF conventions): for
# each model spec, train a few steps, save, evaluate the checkpoint on 4 validation rows with
# `tapestry ckpt eval`, and require the logits (relative to the largest logit) and the loss to
# agree within 1e-5. Usage: model_ref.sh TAPESTRY DATA_DIR WORK_DIR
set -euo pipefail
exe=$1 data=$2 work=$3
here=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$work" && mkdir -p "$work"
specs=(
  "gpt2|--n-layer 2"
  "llama|--model tiny-llama --n-layer 2"
  "apertus|--model tiny-llama --n-layer 2 --mlp xielu --qk-norm true --ffn-dim 256 --rope-scaling llama3 --rope-original-context 16 --rope-factor 4"
  "mqa-layernorm-nobias|--arch llama --n-layer 2 --n-kv-head 1 --norm layernorm --mlp gelu --tie-embeddings true"
)
fail=0
for s in "${specs[@]}"; do
  name=${s%%|*} flags=${s#*|}
  dir=$work/$name
  # shellcheck disable=SC2086
  "$exe" train --train-data "$data/corpus_train.bin" --val-every 0 --steps 8 --lr 1e-2 --warmup-steps 0 \
    -b 4 -t 64 --save-every 8 --ckpt-dir "$dir" --log-every 100 $flags > "$dir.log" 2>&1 || { echo "FAIL $name: training failed"; cat "$dir.log"; fail=1; continue; }
  ev=$("$exe" ckpt eval "$dir/step_00000008.h5" --data "$data/corpus_val.bin" -t 64 --rows 4 --logits-out "$dir/logits.f32") \
    || { echo "FAIL $name: ckpt eval failed"; fail=1; continue; }
  loss=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["loss"])' "$ev")
  if out=$(/usr/bin/python3 "$here/tools/model_ref.py" "$dir/step_00000008.h5" "$data/corpus_val.bin" --seq-len 64 --rows 4 \
             --compare-logits "$dir/logits.f32" --tol 1e-5 --compare-loss "$loss" --loss-tol 1e-5 2>&1); then
    echo "ok   $name: tapestry loss $loss; reference $out"
  else
    echo "FAIL $name: $out"
    fail=1
  fi
done
[ "$fail" = 0 ] && echo "model_ref: all specs agree" || { echo "model_ref: FAILED"; exit 1; }
