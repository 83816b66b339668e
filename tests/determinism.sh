#!/usr/bin/env bash
# The kernels that promise determinism give the same bits with 1 and 2 threads: runs
# test_kernels "[determinism]" at OMP_NUM_THREADS=1 and 2 and compares the printed checksums.
# A build whose default execution space is not threaded (Kokkos Serial) cannot vary the thread
# count: the test exits 77, which CTest reports as skipped.
#   tests/determinism.sh TEST_KERNELS
set -euo pipefail
exe=${1:?usage: determinism.sh TEST_KERNELS}
line() { OMP_NUM_THREADS=$1 "$exe" "[determinism]" | grep '^determinism:'; }
one=$(line 1)
two=$(line 2)
echo "1 thread:  $one"
echo "2 threads: $two"
c1=$(echo "$one" | awk '{print $3}'); c2=$(echo "$two" | awk '{print $3}')
if [ "$c1" = "$c2" ]; then echo "determinism: skipped: the default execution space runs $c1 thread(s) either way"; exit 77; fi
[ "$(echo "$one" | awk '{print $5}')" = "$(echo "$two" | awk '{print $5}')" ] || { echo "determinism: the bits differ between 1 and 2 threads"; exit 1; }
echo "determinism: same bits at 1 and 2 threads"
