#!/usr/bin/env bash
# On a GPU machine: runs tools/gpu_check.sh on a bundle made by tools/gpu_bundle.sh, with the
# machine's own CUDA libraries (runtime, cuBLAS, cuBLASLt, NCCL, driver) and the bundle's Open
# MPI (relocated through OPAL_PREFIX).
#
#   tools/gpu_run.sh [BUNDLE] [OUT_DIR]      (BUNDLE: the archive or its unpacked folder, default
#                                             .gpu.tar.xz; OUT_DIR default gpu_check_out)
#
# Environment: as tools/gpu_check.sh (PEAK, BATCH, STEPS, DEADLINE, ...); with OUT set to a
# folder, the logs are also packed into OUT/gpu_check.tar.gz. Prints where each CUDA library was
# found, and stops before any check if the binary would not load.
set -uo pipefail
cd "$(dirname "$0")/.."
B=${1:-.gpu.tar.xz}
if [ -f "$B" ]; then  # the archive: unpacked beside the temporary files
  dir=${TMPDIR:-/tmp}/tapestry-gpu-bundle
  rm -rf "$dir" && mkdir -p "$dir" && tar xJf "$B" -C "$dir" || { echo "gpu_run: error: cannot unpack $B" >&2; exit 1; }
  B=$(find "$dir" -mindepth 1 -maxdepth 1 -type d | head -n 1)
fi
B=$(cd "$B" 2>/dev/null && pwd) || { echo "gpu_run: error: no bundle at ${1:-.gpu.tar.xz} (tools/gpu_bundle.sh makes it)" >&2; exit 1; }
OUTDIR=${2:-gpu_check_out}

# The first directory holding each library: the toolkit, the driver's mount, the Python wheels
# (nvidia-cublas, nvidia-cuda-runtime, nvidia-nccl-cu13), then a search.
dirs=()
wheels=$(python3 -c 'import nvidia; print(" ".join(nvidia.__path__))' 2>/dev/null || true)
for name in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libnccl.so.2 libcuda.so.1; do
  found=""
  for d in ${CUDA_HOME:+$CUDA_HOME/lib64} /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
           /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu; do
    if [ -e "$d/$name" ]; then found=$d; break; fi
  done
  # the loader's cache, then the wheels' folder (site-packages/nvidia/...), then the whole disk
  [ -z "$found" ] && found=$(ldconfig -p 2>/dev/null | awk -v n="$name" '$1 == n {print $NF; exit}' | xargs -r dirname)
  [ -z "$found" ] && [ -n "$wheels" ] && found=$(find $wheels -name "$name" -print 2>/dev/null | head -n 1 | xargs -r dirname)
  [ -z "$found" ] && found=$(find / -xdev \( -path /proc -o -path "$B" \) -prune -o -name "$name" -print 2>/dev/null |
                             head -n 1 | xargs -r dirname)
  if [ -z "$found" ]; then echo "gpu_run: error: $name not found on this machine" >&2; exit 1; fi
  echo "gpu_run: $name from $found"
  case " ${dirs[*]} " in *" $found "*) ;; *) dirs+=("$found") ;; esac
done
export LD_LIBRARY_PATH="$B/lib:$(IFS=:; echo "${dirs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# One node: no ssh to start the ranks of mpirun. (Not ess_singleton_isolated: lone ranks without
# the daemon share one session folder name, and one a timeout killed can block the next.)
export OPAL_PREFIX="$B/ompi" PATH="$B/ompi/bin:$PATH" OMPI_MCA_plm=isolated
missing=$(ldd "$B/src/tapestry" | grep "not found" || true)
if [ -n "$missing" ]; then echo "gpu_run: error: $B/src/tapestry would not load:"; echo "$missing"; exit 1; fi
echo "gpu_run: bundle $B ($(cat "$B/SIZE" 2>/dev/null))"
tools/gpu_check.sh "$B" "$OUTDIR"
rc=$?
# On a borrowed machine whose tool brings back a few files from $OUT: every log in one archive.
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
  tar czf "$OUT/gpu_check.tar.gz" --exclude=data -C "$(dirname "$OUTDIR")" "$(basename "$OUTDIR")" &&
    echo "gpu_run: logs in $OUT/gpu_check.tar.gz"
fi
exit $rc
