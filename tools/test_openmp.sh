#!/usr/bin/env bash
# The test suite again on a threaded backend: Kokkos 4.6.01 with OpenMP (and Serial), built from
# ../shared/third_party/kokkos-4.6.01.tar.gz once and cached, Tapestry built against it in
# build-openmp/, and the whole CTest suite run there. Without the tarball it says so and exits 0
# (a user's machine tests with its own Kokkos through tools/test.sh).
# Threads: Tapestry gives each rank the node's cores / its ranks (2 threads for one rank here).
set -euo pipefail
cd "$(dirname "$0")/.."
tarball=../shared/third_party/kokkos-4.6.01.tar.gz
# OpenBLAS on OpenMP threads: one thread pool for the Kokkos kernels and the BLAS
if ! dpkg-query -W -f='${Status}' libopenblas0-openmp 2>/dev/null | grep -q "install ok installed"; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends libopenblas0-openmp >/dev/null
fi
if [ ! -f "$tarball" ]; then
  echo "test_openmp: SKIPPED: $tarball not found (no Kokkos 4 source to build the OpenMP backend from)"
  exit 0
fi
cache=${TAPESTRY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tapestry}
prefix=$cache/kokkos-4.6.01-openmp
if [ ! -f "$prefix/.complete" ]; then
  echo "test_openmp: building Kokkos 4.6.01 (OpenMP + Serial) into $prefix"
  work=$(mktemp -d)
  tar xzf "$tarball" -C "$work"
  cmake -S "$work/kokkos-4.6.01" -B "$work/build" -DKokkos_ENABLE_OPENMP=ON -DKokkos_ENABLE_SERIAL=ON \
    -DCMAKE_CXX_STANDARD=17 -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$prefix" > "$work/configure.log"
  cmake --build "$work/build" -j "$(nproc)" > "$work/build.log"
  cmake --install "$work/build" > /dev/null
  touch "$prefix/.complete"
  rm -rf "$work"
fi
cmake -S . -B build-openmp -DCMAKE_BUILD_TYPE=Release -DTAPESTRY_BUILD_TESTS=ON -DKokkos_ROOT="$prefix" > /dev/null
grep -q "Kokkos_DIR:PATH=$prefix" build-openmp/CMakeCache.txt || {
  echo "test_openmp: build-openmp/ found another Kokkos than $prefix (delete build-openmp/)"; exit 1; }
cmake --build build-openmp -j "$(nproc)"
cd build-openmp
./src/tapestry bench gemm --size 64 --iters 1 | head -1   # the backend line: Kokkos 4.6.1, OpenMP, threads
# Tests labelled `once` do not depend on the Kokkos backend, or get one thread per rank anyway, and
# are long: test_large_count (MPI transfers above 2^31 elements, 13 GB, 3 minutes),
# fuzz_numeric_flags (the command line), slurm_pbs_jobs (the job scripts under a real Slurm),
# the tokenizer and Megatron-format checks against their reference tools, and test_llama at 8
# ranks. They run once, in the Debian build's suite.
ctest --output-on-failure --timeout 600 -LE once
