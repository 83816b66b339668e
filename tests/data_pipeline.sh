#!/usr/bin/env bash
# A user's data path, end to end, with the executable: train a SentencePiece tokenizer on the
# embedded corpus, tokenize text and JSON lines into Megatron datasets with 1 rank, with 2 ranks
# and with 2 threads (the files must be byte-identical), check them with the independent numpy
# reader, then train a Llama-style model on a weighted, shuffled mixture of them with document
# masking, and resume from its checkpoint (the resumed losses must equal the uninterrupted run's).
#   tests/data_pipeline.sh TAPESTRY WORK_DIR
set -euo pipefail
exe=$(realpath "$1")
work=$2
src=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$work" && mkdir -p "$work" && cd "$work"
fail() { echo "data_pipeline: FAIL: $*"; exit 1; }
mpi() { "$src/tools/mpirun.sh" "$@"; }

"$exe" data train-tokenizer "$src/inputs/corpus/licenses.txt" "$src/tests/data/multilingual.txt" -o tok --vocab-size 600 \
  --model-type unigram | tee train-tokenizer.log
grep -q "wrote tok.model: SentencePiece .*(600 ids, bos 1, eos 2)" train-tokenizer.log || fail "train-tokenizer"
# JSON lines from the multilingual text: one document per paragraph.
/usr/bin/python3 -c "
import json, sys
for p in open(sys.argv[1], encoding='utf-8').read().split('\n\n'):
    print(json.dumps({'text': p}, ensure_ascii=False))" "$src/tests/data/multilingual.txt" > ml.jsonl
for run in one two threads; do
  case $run in
    one) cmd=("$exe") ; extra=() ;;
    two) cmd=(mpi -np 2 "$exe") ; extra=() ;;
    threads) cmd=("$exe") ; extra=(--threads 2) ;;
  esac
  "${cmd[@]}" data prepare "$src/inputs/corpus/licenses.txt" --doc-separator '\n\n' --tokenizer tok.model --format megatron \
    -o "$run" --name lic "${extra[@]}" > "prepare_lic_$run.log"
  "${cmd[@]}" data prepare ml.jsonl --tokenizer tok.model --format megatron -o "$run" --name ml --val-fraction 0.2 \
    "${extra[@]}" > "prepare_ml_$run.log"
done
grep -q "^tokenized .* MB/s, .* tokens/s (2 ranks x 1 thread)" prepare_lic_two.log || fail "no throughput line"
grep -q "each document ends with EOS id 2" prepare_lic_one.log || fail "no EOS line"
for f in lic_train.bin lic_train.idx lic_val.bin lic_val.idx ml_train.bin ml_train.idx ml_val.bin ml_val.idx; do
  cmp -s "one/$f" "two/$f" || fail "$f differs between 1 and 2 ranks"
  cmp -s "one/$f" "threads/$f" || fail "$f differs between 1 and 2 threads"
done
ls two | grep -q part && fail "part files left behind"
for d in one/lic_train one/lic_val one/ml_train one/ml_val; do
  /usr/bin/python3 "$src/tools/megatron_check.py" "$d" > check.log || { cat check.log; fail "numpy reader rejects $d"; }
done
docs=$(/usr/bin/python3 "$src/tools/megatron_check.py" one/lic_train | sed -n 's/.*documents \([0-9]*\),.*/\1/p')
[ -n "$docs" ] && [ "$docs" -gt 50 ] || fail "lic_train has too few documents ($docs)"

# Train on a 3:1 shuffled mixture with document masking; save at step 4; resume from it.
args=(train --model tiny-llama --vocab-size 600 --train-data "3 one/lic_train 1 one/ml_train" --val-data one/lic_val
      --shuffle true --doc-mask true --eod-token 2 --eod-mask-loss true -b 2 -t 64 --steps 8 --val-every 4 --val-batches 1
      --log-every 1 --save-every 4 --keep 0)
"$exe" "${args[@]}" --ckpt-dir ck > full.log
grep -q "data: mixture of 2: 0.750 'one/lic_train' (megatron uint16" full.log || fail "no mixture line"
grep -q "documents end at token 2: attention stays inside each document, RoPE positions restart" full.log || fail "no masking line"
"$exe" "${args[@]}" --ckpt-dir ck2 --resume ck/step_00000004.h5 > resumed.log
grep -q "resumed from ck/step_00000004.h5 at step 4" resumed.log || fail "did not resume"
for s in 5 6 7 8; do
  a=$(grep -E "^step +$s/8 \| loss" full.log | awk '{print $5}')
  b=$(grep -E "^step +$s/8 \| loss" resumed.log | awk '{print $5}')
  [ -n "$a" ] && [ "$a" = "$b" ] || fail "step $s: loss $a uninterrupted, $b resumed"
done
# The trained model to Hugging Face, with its tokenizer and special ids.
"$exe" ckpt export ck/step_00000008.h5 --format hf -o hf --tokenizer tok.model > export.log
[ -f hf/tokenizer.model ] && cmp -s hf/tokenizer.model tok.model || fail "the tokenizer was not copied"
/usr/bin/python3 -c "import json,sys; c=json.load(open('hf/config.json')); sys.exit(0 if (c['bos_token_id'], c['eos_token_id']) == (1, 2) else 1)" ||
  fail "config.json lacks the tokenizer's BOS/EOS ids"
"$exe" ckpt export ck/step_00000008.h5 --format hf -o hf_big --tokenizer "$src/tests/data/missing.model" 2> bad.log && fail "a missing tokenizer was accepted"
grep -q "tapestry: error: tokenizer '.*missing.model'" bad.log || fail "unclear error for a missing tokenizer: $(cat bad.log)"
[ -e hf_big ] && fail "a failed export left a directory"
echo "data_pipeline: ok (tokenizer, prepare at 1 and 2 ranks and 2 threads identical, numpy reader, mixture + doc-mask training resumed exactly, HF export with the tokenizer)"
