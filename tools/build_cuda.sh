#!/usr/bin/env bash
# The CUDA build on a machine with the CUDA 13 toolkit but no GPU (the development VM), ready to
# carry to a GPU machine: Kokkos 4.6.01 for CUDA (Hopper, sm_90) from ../shared/third_party (its
# CUDA 13 patch applied) unless KOKKOS_CUDA already holds one, then Tapestry with nvcc_wrapper
# (the executable and the three test programs tools/gpu_check.sh runs), then tools/gpu_bundle.sh.
#
#   tools/build_cuda.sh [BUILD_DIR]      (default build-cuda)
#
# Environment: KOKKOS_CUDA (Kokkos' install prefix; default /tmp/kokkos-cuda), JOBS (default 2),
# CUDA_HOME (default /usr/local/cuda). From nothing on the 2-core VM: 15m41s, Kokkos included
# (measured 2026-12-02); an incremental build takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build-cuda}
KOKKOS_CUDA=${KOKKOS_CUDA:-/tmp/kokkos-cuda}
JOBS=${JOBS:-2}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH="$CUDA_HOME/bin:$PATH"
command -v nvcc >/dev/null || { echo "build_cuda: error: nvcc not found (CUDA_HOME=$CUDA_HOME)" >&2; exit 1; }

if [ ! -f "$KOKKOS_CUDA/lib/cmake/Kokkos/KokkosConfig.cmake" ]; then
  src=../shared/third_party
  [ -f "$src/kokkos-4.6.01.tar.gz" ] || { echo "build_cuda: error: no Kokkos at $KOKKOS_CUDA and no $src/kokkos-4.6.01.tar.gz" >&2; exit 1; }
  work=$(mktemp -d /tmp/kokkos-cuda-src.XXXXXX)
  tar xzf "$src/kokkos-4.6.01.tar.gz" -C "$work"
  (cd "$work/kokkos-4.6.01" && patch -p1 -s <"$OLDPWD/$src/kokkos-4.6.01-cuda13.patch")
  k=$work/kokkos-4.6.01
  echo "build_cuda: Kokkos 4.6.01 (CUDA, HOPPER90) into $KOKKOS_CUDA"
  cmake -S "$k" -B "$k/build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_STANDARD=17 -DCMAKE_INSTALL_PREFIX="$KOKKOS_CUDA" \
    -DCMAKE_CXX_COMPILER="$k/bin/nvcc_wrapper" -DKokkos_ENABLE_SERIAL=ON -DKokkos_ENABLE_CUDA=ON \
    -DKokkos_ENABLE_CUDA_LAMBDA=ON -DKokkos_ARCH_HOPPER90=ON >"$work/configure.log"
  cmake --build "$k/build" -j "$JOBS" >"$work/build.log"
  cmake --install "$k/build" >"$work/install.log"
  rm -rf "$work"
fi

log=$(mktemp /tmp/build_cuda_configure.XXXXXX)
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DKokkos_ROOT="$KOKKOS_CUDA" \
  -DCMAKE_CXX_COMPILER="$KOKKOS_CUDA/bin/nvcc_wrapper" -DTAPESTRY_BUILD_TESTS=ON >"$log" ||
  { tail -n 20 "$log"; exit 1; }
grep -q "GPU path (CUDA/cuBLAS): ON" "$log" ||
  { echo "build_cuda: error: CMake did not turn the GPU path on (see $log)" >&2; exit 1; }
rm -f "$log"
cmake --build "$BUILD" -j "$JOBS" --target tapestry test_kernels test_train test_collectives
tools/gpu_bundle.sh "$BUILD"
