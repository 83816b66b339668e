#!/usr/bin/env bash
# Megatron indexed datasets, ours against an independent numpy reader/writer (tools/megatron_check.py):
# C++ writes, numpy reads; numpy writes, C++ reads; both writers give byte-identical files; for
# uint16 and int32 ids, with an empty document. Also llm.c files and concatenation round-trip.
# Usage: megatron_interop.sh TOKEN_DATASET_TOOL [WORK_DIR]
set -euo pipefail
tool=$(realpath "$1")
work=${2:-$(mktemp -d)}
src=$(cd "$(dirname "$0")/.." && pwd)
py=/usr/bin/python3
check="$src/tools/megatron_check.py"
rm -rf "$work" && mkdir -p "$work" && cd "$work"
fail() { echo "FAIL: $*"; exit 1; }

# Documents, one a line: the third is empty; ids near the uint16 limit and, for int32, above it.
printf '5 17 3 9\n0\n\n65535 1 2 3 4 5 6 7\n42\n' > small.txt
printf '70000 1 131071\n\n65536 65535 0\n99999\n' > big.txt

for case in "small 65536 uint16" "big 131072 int32"; do
  set -- $case
  ids=$1.txt vocab=$2 dtype=$3
  # 1. C++ writes, numpy reads
  "$tool" write megatron "$vocab" cpp_$1 < "$ids" 2> /dev/null || fail "C++ write of $ids"
  out=$($py "$check" cpp_$1 --expect-tokens "$ids") || fail "numpy check of the C++ dataset ($ids): $out"
  grep -q "dtype $dtype" <<< "$out" || fail "C++ wrote $out, expected dtype $dtype"
  # 2. numpy writes, C++ reads
  $py "$check" --write np_$1 --from-ids "$ids" --dtype "$dtype" || fail "numpy write of $ids"
  "$tool" dump np_$1 > np_$1.dump 2> /dev/null || fail "C++ read of the numpy dataset ($ids)"
  diff -q "$ids" np_$1.dump > /dev/null || fail "C++ reads the numpy dataset differently from $ids"
  # 3. the two writers agree byte for byte
  cmp -s cpp_$1.bin np_$1.bin || fail "cpp_$1.bin and np_$1.bin differ"
  cmp -s cpp_$1.idx np_$1.idx || fail "cpp_$1.idx and np_$1.idx differ"
  # 4. concatenation keeps the documents, and numpy agrees
  "$tool" concat megatron "$vocab" cat_$1 cpp_$1 np_$1.idx || fail "concat of $ids"
  cat "$ids" "$ids" > twice_$1.txt
  $py "$check" cat_$1 --expect-tokens twice_$1.txt > /dev/null || fail "numpy check of the concatenation ($ids)"
  # 5. llm.c: one document holding all the tokens
  "$tool" write llmc "$vocab" l_$1.bin < "$ids" 2> /dev/null || fail "C++ llm.c write of $ids"
  "$tool" dump l_$1.bin > l_$1.dump 2> /dev/null || fail "C++ llm.c read of $ids"
  [ "$(tr -s ' \n' '  ' < l_$1.dump | xargs)" = "$(tr -s ' \n' '  ' < "$ids" | xargs)" ] ||
    fail "llm.c round trip of $ids"
  echo "ok: megatron $dtype: C++ -> numpy, numpy -> C++, byte-identical writers, concat; llm.c round trip"
done

# A broken index is one error line from both readers.
head -c 40 cpp_small.idx > cut.idx && cp cpp_small.bin cut.bin
$py "$check" cut 2> err.txt && fail "numpy accepted a truncated index"
[ "$(wc -l < err.txt)" = 1 ] || fail "numpy: $(cat err.txt)"
"$tool" dump cut > /dev/null 2> err.txt && fail "C++ accepted a truncated index"
grep -q "truncated" err.txt || fail "C++: $(cat err.txt)"

echo "megatron_interop: ok"
