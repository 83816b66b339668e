#!/usr/bin/env bash
# Hugging Face interop end to end: a tp 2 x pp 2 run's checkpoint exports to a directory that an
# independent reader (tools/hf_check.py) accepts and whose logits the numpy reference
# (tools/model_ref.py, reading HF names) reproduces; a run starts from it at another layout with
# bitwise the same parameters; bf16 and sharded exports; GPT-2 and Apertus; broken files are one
# error line each. Usage: hf_roundtrip.sh TAPESTRY DATA_DIR WORK_DIR MPIRUN...
set -euo pipefail
exe=$1 data=$2 work=$3
shift 3
mpirun=("$@")
src=$(cd "$(dirname "$0")/.." && pwd)
py=/usr/bin/python3
rm -rf "$work" && mkdir -p "$work" && cd "$work"
fail() { echo "FAIL: $*"; exit 1; }
common=(--train-data "$data/corpus_train.bin" --val-every 0 -b 4 -t 64 --log-every 100 --metrics-file "")
evalargs=(--data "$data/corpus_val.bin" -t 64 --rows 4)
loss_of() { $py -c 'import json,sys; print(json.loads(sys.argv[1])["loss"])' "$1"; }

# 1. a tiny Llama trained at tp 2 x pp 2, exported in fp32
"${mpirun[@]}" -np 4 "$exe" train --model tiny-llama --n-layer 2 "${common[@]}" --steps 6 --tp 2 --pp 2 --micro-batches 2 \
  --save-every 6 --ckpt-dir ck > train.log 2>&1 || fail "tp x pp training: $(tail -3 train.log)"
"$exe" ckpt export ck/step_00000006.h5 --format hf -o hf32 || fail "export fp32"
$py "$src/tools/hf_check.py" hf32 --expect-dtype F32 || fail "hf_check fp32"
ev=$("$exe" ckpt eval ck/step_00000006.h5 "${evalargs[@]}" --logits-out l32.f32) || fail "ckpt eval"
$py "$src/tools/model_ref.py" hf32 "$data/corpus_val.bin" --seq-len 64 --rows 4 --compare-logits l32.f32 --tol 1e-5 \
  --compare-loss "$(loss_of "$ev")" --loss-tol 1e-5 || fail "numpy reference on the HF directory"
"$exe" ckpt eval hf32 "${evalargs[@]}" --logits-out l32hf.f32 > /dev/null || fail "ckpt eval of the HF directory"
cmp -s l32.f32 l32hf.f32 || fail "Tapestry's logits from the HF directory differ from the checkpoint's"
echo "ok: tp2 x pp2 checkpoint -> HF fp32: hf_check OK, numpy reference agrees, Tapestry's logits bitwise equal"

# 2. a run starts from the directory at another layout (dp 2 with ZeRO-1, then pp 2): bitwise parameters
"${mpirun[@]}" -np 2 "$exe" train --init-from hf32 "${common[@]}" --steps 0 --zero 1 --save-every 1 --ckpt-dir back \
  > back.log 2>&1 || fail "--init-from the HF directory: $(tail -3 back.log)"
grep -q "note: model taken from hf32/config.json" back.log || fail "the model spec was not taken from config.json"
$py - ck/step_00000006.h5 back/step_00000000.h5 <<'PY' || fail "round trip not bitwise"
import sys, h5py, numpy as np
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
names = []
a["/model"].visit(lambda n: names.append(n) if isinstance(a["/model"][n], h5py.Dataset) else None)
bad = [n for n in names if not np.array_equal(a["/model"][n][()].view(np.uint32), b["/model"][n][()].view(np.uint32))]
print(f"round trip: {len(names)} tensors, {len(bad)} differ")
sys.exit(1 if bad or not names else 0)
PY
# a bare .safetensors file is read for the run's own model (here at tp 2); a mismatch names the tensor
"${mpirun[@]}" -np 2 "$exe" train --model tiny-llama --n-layer 2 --init-from hf32/model.safetensors "${common[@]}" --steps 0 \
  --tp 2 --save-every 1 --ckpt-dir back_st > back_st.log 2>&1 || fail "--init-from model.safetensors: $(tail -3 back_st.log)"
cmp -s <($py -c 'import h5py,sys; f=h5py.File(sys.argv[1]); print(f["/model/layers/01/mlp/gate/weight"][()].tobytes().hex())' back/step_00000000.h5) \
       <($py -c 'import h5py,sys; f=h5py.File(sys.argv[1]); print(f["/model/layers/01/mlp/gate/weight"][()].tobytes().hex())' back_st/step_00000000.h5) \
  || fail "the .safetensors file loaded other values than its directory"
set +e
"$exe" train --model tiny-llama --n-layer 3 --init-from hf32/model.safetensors "${common[@]}" --steps 1 > /dev/null 2> mismatch.txt
rc=$?
set -e
[ "$rc" -eq 1 ] && grep -q "has no tensor model.layers.2.input_layernorm.weight" mismatch.txt || fail "spec mismatch: $(cat mismatch.txt)"
"${mpirun[@]}" -np 2 "$exe" train --init-from hf32 "${common[@]}" --steps 2 --pp 2 > cont.log 2>&1 || fail "continued training from HF at pp 2"
grep -Eq "step +2/2 \| loss [0-9.]+" cont.log || fail "continued training printed no step 2"
echo "ok: HF -> dp 2 ZeRO-1 checkpoint bitwise equal; training continues from it at pp 2"

# 3. bf16, sharded: checked, and compared at bf16 precision (Tapestry and numpy on the same rounded weights)
"$exe" ckpt export ck/step_00000006.h5 --format hf --dtype bf16 --max-shard-size 300KB -o hf16 || fail "export bf16"
[ -f hf16/model.safetensors.index.json ] || fail "no shard index"
$py "$src/tools/hf_check.py" hf16 --expect-dtype BF16 || fail "hf_check bf16"
ev16=$("$exe" ckpt eval hf16 "${evalargs[@]}" --logits-out l16.f32) || fail "ckpt eval bf16"
$py "$src/tools/model_ref.py" hf16 "$data/corpus_val.bin" --seq-len 64 --rows 4 --compare-logits l16.f32 --tol 1e-5 \
  --compare-loss "$(loss_of "$ev16")" --loss-tol 1e-5 || fail "numpy reference on the bf16 directory"
$py -c 'import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); d = abs(a - b) / b; print(f"bf16 export: loss {a} vs fp32 {b} ({d:.2g})"); sys.exit(0 if 0 < d < 1e-2 else 1)' \
  "$(loss_of "$ev16")" "$(loss_of "$ev")" || fail "bf16 loss not within 1% of fp32 (or identical)"
echo "ok: bf16 in $(ls hf16/*.safetensors | wc -l) shards: hf_check OK, numpy agrees"

# 4. GPT-2 (Conv1D, tied, biases) and Apertus (xIELU, QK-norm, llama3 RoPE scaling)
for spec in "gpt2|--n-layer 2" "apertus|--model tiny-llama --n-layer 2 --mlp xielu --qk-norm true --ffn-dim 256 --rope-scaling llama3 --rope-original-context 16 --rope-factor 4"; do
  name=${spec%%|*} flags=${spec#*|}
  # shellcheck disable=SC2086
  "$exe" train $flags "${common[@]}" --steps 4 --save-every 4 --ckpt-dir "ck_$name" > "$name.log" 2>&1 || fail "$name training"
  "$exe" ckpt export "ck_$name/step_00000004.h5" --format hf -o "hf_$name" > /dev/null || fail "$name export"
  $py "$src/tools/hf_check.py" "hf_$name" --expect-dtype F32 || fail "$name hf_check"
  e=$("$exe" ckpt eval "ck_$name/step_00000004.h5" "${evalargs[@]}" --logits-out "l_$name.f32") || fail "$name eval"
  $py "$src/tools/model_ref.py" "hf_$name" "$data/corpus_val.bin" --seq-len 64 --rows 4 --compare-logits "l_$name.f32" \
    --tol 1e-5 --compare-loss "$(loss_of "$e")" --loss-tol 1e-5 || fail "$name numpy reference"
  "$exe" ckpt eval "hf_$name" "${evalargs[@]}" --logits-out "l_${name}_hf.f32" > /dev/null || fail "$name eval HF"
  cmp -s "l_$name.f32" "l_${name}_hf.f32" || fail "$name: logits from HF differ from the checkpoint's"
  echo "ok: $name -> HF: hf_check OK, numpy agrees, logits bitwise equal"
done

# 5. broken files: one clear error line each, non-zero exit
$py "$src/tests/hf_corrupt.py" hf32 bad > /dev/null
expect_error() {  # case, regex
  set +e
  "$exe" train --init-from "bad/$1" "${common[@]}" --steps 1 > /dev/null 2> err.txt
  local rc=$?
  set -e
  [ "$rc" -ne 0 ] || fail "$1: exit 0"
  [ "$rc" -lt 100 ] || fail "$1: crashed ($rc)"
  [ "$(grep -c . err.txt)" -eq 1 ] || fail "$1: expected one error line, got: $(cat err.txt)"
  grep -Eq "$2" err.txt || fail "$1: '$(cat err.txt)' does not match '$2'"
  echo "ok: $1: $(cat err.txt)"
}
expect_error truncated "tapestry: error: safetensors file .*: tensor .* lies outside the [0-9]+ data bytes \(truncated file\?\)"
expect_error header_past_end "tapestry: error: safetensors file .*: header length [0-9]+ runs past the end of the file"
expect_error overlap "tapestry: error: safetensors file .*: tensors .* and .* overlap"
expect_error missing_tensor "tapestry: error: 'bad/missing_tensor' has no tensor model.layers.[0-9]+.self_attn.k_proj.weight"
expect_error unknown_dtype "tapestry: error: safetensors file .*: tensor .* has dtype 'I8'; this program reads F32, BF16 and F16"
echo "hf_roundtrip: all checks passed"
