#!/usr/bin/env bash
# Tokenization throughput of `tapestry data prepare`: byte-level BPE (GPT-2 and cl100k_base, the
# Llama 3 regex, converted from the npm tiktoken package), SentencePiece (unigram and BPE trained
# by `tapestry data train-tokenizer`) and the byte tokenizer, on a real multilingual corpus built
# from this machine's translations (tools/multilingual_corpus.py), at 1 rank x 1 thread, 1 x 2 and
# 2 x 1. Prints each `data prepare` summary line; writes them to docs/bench/tokenize.txt.
#   tools/bench_tokenize.sh [MB]     (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
mb=${1:-20}
exe=build/src/tapestry
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
npm_dir=${TAPESTRY_NPM_DIR:-$HOME/.cache/tapestry/npm}
out=docs/bench/tokenize.txt
mkdir -p docs/bench
{
  echo "# tools/bench_tokenize.sh $mb, $(date -u +%Y-%m-%d), $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  /usr/bin/python3 tools/multilingual_corpus.py "$work/corpus.jsonl" --mb "$mb"
  for enc in gpt2 cl100k_base; do
    node tools/tiktoken_golden.mjs "$enc" "$npm_dir/node_modules" tests/data/multilingual.txt "$work/tt" >/dev/null
  done
  # SentencePiece models need plain text: the corpus' documents, one line each.
  /usr/bin/python3 -c "import json,sys; [print(json.loads(l)['text']) for l in open(sys.argv[1])]" "$work/corpus.jsonl" > "$work/corpus.txt"
  for type in unigram bpe; do
    start=$(date +%s.%N)
    $exe data train-tokenizer "$work/corpus.txt" -o "$work/spm_$type" --vocab-size 32000 --model-type $type \
      --max-sentences 200000 | sed "s|$work/||"
    echo "train-tokenizer $type: $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
  done
  for tok in byte "$work/tt/gpt2/tokenizer.json" "$work/tt/cl100k_base/tokenizer.json" "$work/spm_unigram.model" "$work/spm_bpe.model"; do
    echo "== --tokenizer ${tok#$work/}"
    for layout in "1 1" "1 2" "2 1"; do
      set -- $layout
      cmd=($exe data prepare "$work/corpus.jsonl" --tokenizer "$tok" --format megatron --val-fraction 0 -o "$work/out" --threads "$2")
      if [ "$1" -gt 1 ]; then cmd=(tools/mpirun.sh -np "$1" "${cmd[@]}"); fi
      "${cmd[@]}" | grep -E "^tokenized|^tokenizer:" | sed "s|$work/||" | sed "s|^tokenizer: .*(loaded|  (tokenizer loaded|"
    done
  done
} 2>&1 | tee "$out"
