#!/usr/bin/env bash
# Byte-level BPE through Tapestry must give the ids OpenAI's tiktoken gives (npm package
# `tiktoken`, used here only as a test oracle), for GPT-2 (r50k regex) and cl100k_base (the
# Llama 3 regex: case-insensitive contractions, \p{N}{1,3}, lookahead), on tests/data/multilingual.txt.
#   tests/tiktoken_golden.sh TOKENIZER_GOLDEN [WORK_DIR]
# tools/tiktoken_golden.mjs converts each encoding to a tokenizer.json and writes tiktoken's ids;
# TOKENIZER_GOLDEN compares. The npm package is installed once into $TAPESTRY_NPM_DIR (default
# ~/.cache/tapestry/npm; tools/test.sh does it); without node or the package the test exits 77,
# which CTest reports as skipped, never as passed.
set -euo pipefail
golden=$(realpath "${1:?usage: tiktoken_golden.sh TOKENIZER_GOLDEN [WORK_DIR]}")
src=$(cd "$(dirname "$0")/.." && pwd)
work=${2:-$(mktemp -d)}
npm_dir=${TAPESTRY_NPM_DIR:-$HOME/.cache/tapestry/npm}
if ! command -v node >/dev/null; then echo "tiktoken_golden: skipped: node is not installed"; exit 77; fi
if [ ! -f "$npm_dir/node_modules/tiktoken/encoders/gpt2.json" ]; then
  echo "tiktoken_golden: skipped: npm package tiktoken not in $npm_dir (tools/test.sh installs it)"; exit 77
fi
rm -rf "$work" && mkdir -p "$work"
for enc in gpt2 cl100k_base; do
  node "$src/tools/tiktoken_golden.mjs" "$enc" "$npm_dir/node_modules" "$src/tests/data/multilingual.txt" "$work"
  "$golden" "$work/$enc/tokenizer.json" "$src/tests/data/multilingual.txt" "$work/$enc/golden.txt"
done
echo "tiktoken_golden: gpt2 and cl100k_base match tiktoken $(node -p "require('$npm_dir/node_modules/tiktoken/package.json').version")"
