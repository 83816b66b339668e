#!/usr/bin/env bash
# Packs a CUDA build for a GPU machine that has the NVIDIA driver and CUDA 13's libraries (the
# runtime, cuBLAS/cuBLASLt, NCCL) but not this machine's Open MPI, HDF5 or the rest: a borrowed
# node, or one whose modules differ from the build machine's. Then checks, as far as a machine
# without a GPU can, that the bundle starts on its own.
#
#   tools/gpu_bundle.sh BUILD_DIR [DEST]     (DEST: default .gpu, which git ignores)
#
# DEST then holds, in BUILD_DIR's layout (what tools/gpu_check.sh reads):
#   src/tapestry, tests/test_kernels, tests/test_train, tests/test_collectives (those built);
#   lib/     every shared library they load except glibc's, libstdc++, libgcc_s, the CUDA driver,
#            runtime, cuBLAS, cuBLASLt and NCCL (those come from the GPU machine);
#   ompi/    Open MPI's launcher (mpirun, orted), components and help texts, relocated through
#            OPAL_PREFIX, and the components' libraries in lib/;
#   SIZE     the bundle's size, binaries and commit.
# and DEST.tar.xz packs it: that archive is what travels to a borrowed machine (64 MiB there with
# the working tree: the script fails above 56 MiB). On the GPU machine:
#   tools/gpu_run.sh DEST.tar.xz [OUT_DIR]     (or the unpacked DEST)
#
# The check (skipped with BUNDLE_CHECK=0; needs root for a chroot): a root holding only glibc,
# libstdc++, libgcc_s, the bundle and CUDA's libraries (bind-mounted from CUDA_LIB, default
# /usr/local/cuda/lib64) plus the CUDA stub driver. There `tapestry --version` must start, run
# MPI_Init and stop with Tapestry's "no CUDA device visible" line (the stub has no device), both
# alone and as 2 ranks under the bundle's mpirun. A library left out fails it.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:?usage: tools/gpu_bundle.sh BUILD_DIR [DEST]}
DEST=${2:-.gpu}
CUDA_LIB=${CUDA_LIB:-/usr/local/cuda/lib64}
MAX_BYTES=$((56 * 1024 * 1024))

[ -x "$BUILD/src/tapestry" ] || { echo "gpu_bundle: error: $BUILD/src/tapestry not found (build the tapestry target)" >&2; exit 1; }
grep -q "libcudart" <(ldd "$BUILD/src/tapestry") || {
  echo "gpu_bundle: error: $BUILD/src/tapestry is not a CUDA build (no libcudart)" >&2; exit 1; }

rm -rf "$DEST"
mkdir -p "$DEST/src" "$DEST/tests" "$DEST/lib"
bins=("$BUILD/src/tapestry")
cp "$BUILD/src/tapestry" "$DEST/src/"
for t in test_kernels test_train test_collectives; do
  if [ -x "$BUILD/tests/$t" ]; then cp "$BUILD/tests/$t" "$DEST/tests/"; bins+=("$BUILD/tests/$t"); fi
done
strip --strip-unneeded "$DEST"/src/* "$DEST"/tests/* 2>/dev/null || true

# Libraries the GPU machine brings: the C and C++ runtimes, and the driver and CUDA's own.
provided='^(linux-vdso|ld-linux|libc\.so|libm\.so|libpthread|librt\.so|libdl\.so|libresolv|libstdc\+\+|libgcc_s|libcuda\.so|libcudart|libcublas|libcublasLt|libnccl)'

# Open MPI, relocated: OPAL_PREFIX=$DEST/ompi puts its components under lib/<triplet>/openmpi/...
# as on this machine (ompi_info --path all).
ompi_pkglib=$(ompi_info --path pkglibdir --parsable 2>/dev/null | sed -n 's/^path:pkglibdir://p')
ompi_prefix=$(ompi_info --path prefix --parsable 2>/dev/null | sed -n 's/^path:prefix://p')
ompi_data=$(ompi_info --path pkgdatadir --parsable 2>/dev/null | sed -n 's/^path:pkgdatadir://p')
[ -d "$ompi_pkglib" ] || { echo "gpu_bundle: error: Open MPI's components not found (ompi_info)" >&2; exit 1; }
rel=${ompi_pkglib#"$ompi_prefix"/}
mkdir -p "$DEST/ompi/bin" "$DEST/ompi/$rel" "$DEST/ompi/share"
cp "$ompi_pkglib"/*.so "$DEST/ompi/$rel/"
cp -r "$ompi_data" "$DEST/ompi/share/"
cp "$(command -v orterun)" "$(command -v orted)" "$DEST/ompi/bin/"
ln -sf orterun "$DEST/ompi/bin/mpirun"
libs_of() { ldd "$@" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u; }
libs_of "${bins[@]}" "$DEST/ompi/bin/orterun" "$DEST/ompi/bin/orted" "$DEST/ompi/$rel"/*.so |
  while read -r name path; do
    [[ $name =~ $provided ]] && continue
    [ -e "$DEST/lib/$name" ] || cp -L "$path" "$DEST/lib/$name"
  done

bytes=$(du -sb "$DEST" | cut -f1)
echo "$bytes bytes: $(cd "$DEST" && echo src/* tests/*), from $BUILD at $(git describe --always --dirty)" >"$DEST/SIZE"
# What travels: one archive (xz: about a quarter of the bundle's size).
archive=${DEST%/}.tar.xz
tar cJf "$archive" -C "$(dirname "$DEST")" "$(basename "$DEST")"
packed=$(stat -c %s "$archive")
echo "gpu_bundle: $(cat "$DEST/SIZE"); $packed bytes packed in $archive"
if [ "$packed" -gt "$MAX_BYTES" ]; then
  echo "gpu_bundle: error: $archive is over $((MAX_BYTES / 1048576)) MiB; bundle fewer tests" >&2
  exit 1
fi

[ "${BUNDLE_CHECK:-1}" = 0 ] && { echo "gpu_bundle: $DEST made; check skipped (BUNDLE_CHECK=0)"; exit 0; }
[ "$(id -u)" -eq 0 ] || { echo "gpu_bundle: error: the check needs root (a chroot); BUNDLE_CHECK=0 skips it" >&2; exit 1; }
stub=$(ls "$CUDA_LIB"/stubs/libcuda.so 2>/dev/null || true)
[ -n "$stub" ] || { echo "gpu_bundle: error: no CUDA stub driver in $CUDA_LIB/stubs" >&2; exit 1; }

# The root: glibc, libstdc++ and libgcc_s from this machine (standing for the GPU machine's, which
# are newer), /bin/sh for mpirun, CUDA's libraries bind-mounted, the stub as libcuda.so.1.
root=$(mktemp -d /tmp/gpu_bundle_root.XXXXXX)
trap 'umount -R "$root" 2>/dev/null || true; rm -rf "$root"' EXIT
mkdir -p "$root"/{lib64,lib,bin,tmp,proc,sys,dev,cuda,stub,bundle,etc}
chmod 1777 "$root/tmp"
cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
for l in libc.so.6 libm.so.6 libpthread.so.0 librt.so.1 libdl.so.2 libresolv.so.2 libstdc++.so.6 libgcc_s.so.1; do
  cp -L "/lib/x86_64-linux-gnu/$l" "$root/lib/"
done
cp -L /bin/sh "$root/bin/sh" 2>/dev/null || true
ldd /bin/sh | awk '$3 ~ /^\// {print $3}' | xargs -r -I{} cp -L {} "$root/lib/"
cp -L "$stub" "$root/stub/libcuda.so.1"
echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
echo "127.0.0.1 localhost $(hostname)" >"$root/etc/hosts"
cp -r "$DEST"/. "$root/bundle/"
inside() {  # inside ENV-ARGS COMMAND...: runs it in the root (a mount namespace), 120 s at most
  timeout 120 unshare -m -- sh -c '
    r=$1; cl=$2; shift 2
    mount --bind "$cl" "$r/cuda" && mount -t proc proc "$r/proc" && mount --rbind /sys "$r/sys" && mount --rbind /dev "$r/dev" &&
    exec chroot "$r" /usr/bin/env "$@"' sh "$root" "$CUDA_LIB" "$@"
}
mkdir -p "$root/usr/bin"
cp -L /usr/bin/env "$root/usr/bin/env"
envs=(-i PATH=/bundle/ompi/bin:/bin HOME=/tmp TMPDIR=/tmp OPAL_PREFIX=/bundle/ompi
      LD_LIBRARY_PATH=/bundle/lib:/cuda:/stub:/lib:/lib64 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
      OMPI_MCA_plm=isolated)
want='tapestry: error: rank [01] on node .*: no CUDA device visible'
ok=1
for name in alone two_ranks; do
  if [ $name = alone ]; then cmd=(/bundle/src/tapestry --version)
  else cmd=(/bundle/ompi/bin/mpirun --oversubscribe --bind-to none -np 2 /bundle/src/tapestry --version); fi
  set +e
  out=$(inside "${envs[@]}" "${cmd[@]}" 2>&1)
  rc=$?
  set -e
  if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -Eq "$want" <<<"$out" && ! grep -q "error while loading shared libraries" <<<"$out"; then
    echo "gpu_bundle: check $name ok (exit $rc: $(grep -Eo "$want" <<<"$out" | head -n 1))"
  else
    echo "gpu_bundle: check $name FAILED (exit $rc):"; echo "$out" | head -n 20; ok=0
  fi
done
for t in "$DEST"/tests/*; do  # the tests load their libraries too (they stop at the same line)
  [ -e "$t" ] || continue
  set +e
  out=$(inside "${envs[@]}" "/bundle/tests/$(basename "$t")" 2>&1)
  rc=$?
  set -e
  if grep -q "error while loading shared libraries\|cannot open shared object" <<<"$out" || [ $rc -eq 124 ]; then
    echo "gpu_bundle: check $(basename "$t") FAILED (exit $rc):"; echo "$out" | head -n 10; ok=0
  else
    echo "gpu_bundle: check $(basename "$t") loads (exit $rc: $(grep -m1 'no CUDA device\|error' <<<"$out" || head -n 1 <<<"$out"))"
  fi
done
[ $ok = 1 ] || exit 1
echo "gpu_bundle: $archive ready: carry it to the GPU machine and run tools/gpu_run.sh $archive"
