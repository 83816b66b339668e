#!/usr/bin/env bash
# SentencePiece through Tapestry must give the ids SentencePiece's own spm_encode gives.
#   tests/spm_golden.sh TOKENIZER_GOLDEN [TEXT]
# Trains a small model of each type (unigram, bpe, unigram without normalization; byte fallback)
# on TEXT (default tests/data/multilingual.txt) with spm_train, encodes every line with
# spm_encode --output_format=id and with `TOKENIZER_GOLDEN --encode-lines MODEL TEXT`, and diffs
# the two. Needs spm_train and spm_encode (Debian package sentencepiece). Exit status 0 when all
# three match.
set -euo pipefail
golden=${1:?usage: spm_golden.sh TOKENIZER_GOLDEN [TEXT]}
text=${2:-$(dirname "$0")/data/multilingual.txt}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# "identity": unigram trained as `tapestry data train-tokenizer` trains (no NFKC, whitespace kept).
for type in unigram bpe identity; do
  extra=(--model_type="$type")
  [[ $type == identity ]] && extra=(--model_type=unigram --normalization_rule_name=identity
                                   --remove_extra_whitespaces=false --allow_whitespace_only_pieces=true)
  spm_train --input="$text" --model_prefix="$work/$type" "${extra[@]}" --vocab_size=800 \
            --byte_fallback=true --character_coverage=0.995 --hard_vocab_limit=false \
            --num_threads=1 --minloglevel=2 > "$work/train.log" 2>&1 || { cat "$work/train.log"; exit 1; }
  spm_encode --model="$work/$type.model" --output_format=id < "$text" > "$work/$type.spm"
  "$golden" --encode-lines "$work/$type.model" "$text" > "$work/$type.tapestry"
  if ! diff -q "$work/$type.spm" "$work/$type.tapestry" > /dev/null; then
    echo "spm_golden: $type: ids differ from spm_encode (first differences below)"
    diff "$work/$type.spm" "$work/$type.tapestry" | head -20
    exit 1
  fi
  echo "spm_golden: $type: $(wc -l < "$work/$type.spm") lines, $(wc -w < "$work/$type.spm") ids match spm_encode"
done
