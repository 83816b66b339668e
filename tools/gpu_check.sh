#!/usr/bin/env bash
# Checks of a CUDA build on one GPU node, in a few minutes: the kernel and training tests on the
# GPU, the GPU bad-input errors, cuBLAS fp32/bf16 GEMM rates, GPT-2 124M losses (fp32 and bf16,
# to compare with a CPU run of the same init) and ms/step, tokens/s and MFU (also with bf16
# activation storage, and for Llama 3.2 1B; a kernel breakdown of each), NCCL's path, and PyTorch's
# speed on the same card for reference.
#
#   tools/gpu_check.sh BUILD_DIR [OUT_DIR]      (BUILD_DIR: a CMake build with Kokkos CUDA)
#
# On a machine without this build's MPI, HDF5 and the rest (a borrowed node): tools/gpu_bundle.sh
# packs the build, and tools/gpu_run.sh runs this script on the bundle there. With a short lease,
# set DEADLINE: the checks run most important first (see below), so a cut run keeps the figures.
#
# Environment: PEAK (FLOP/s for MFU; default 989e12, the H100 SXM's dense bf16 peak), BATCH
# (sequences per step for the speed runs; default 8), STEPS (speed-run steps; default 12),
# DEADLINE (seconds from the start after which the remaining checks are skipped), MPIRUN (the
# launcher for the 2-rank check; default mpirun).
# Output: a log of everything and one "CHECK <name> ok|FAILED" line per check.
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:?usage: tools/gpu_check.sh BUILD_DIR [OUT_DIR]}
OUTDIR=${2:-gpu_check_out}
PEAK=${PEAK:-989e12}
BATCH=${BATCH:-8}
STEPS=${STEPS:-12}
DEADLINE=${DEADLINE:-100000}  # seconds after which the remaining checks are skipped
TAP=$BUILD/src/tapestry
mkdir -p "$OUTDIR"
failed=0
check() {  # check NAME SECONDS command...: runs it, logs it, prints CHECK NAME ok|FAILED
  local name=$1 secs=$2
  shift 2
  if [ $((SECONDS + 10)) -gt "$DEADLINE" ]; then echo "CHECK $name SKIPPED (past DEADLINE)"; return; fi
  [ $((SECONDS + secs)) -gt "$DEADLINE" ] && secs=$((DEADLINE - SECONDS))
  echo "=== $name: $*"
  local t0=$SECONDS
  if timeout "$secs" "$@" >"$OUTDIR/$name.log" 2>&1; then
    echo "CHECK $name ok ($((SECONDS - t0)) s)"
  else
    echo "CHECK $name FAILED (exit $?, $((SECONDS - t0)) s)"
    failed=1
  fi
  tail -n 25 "$OUTDIR/$name.log"
}
expect_error() {  # expect_error NAME REGEX command...: must exit non-zero and print REGEX
  local name=$1 regex=$2
  shift 2
  if [ $((SECONDS + 60)) -gt "$DEADLINE" ]; then echo "CHECK $name SKIPPED (past DEADLINE)"; return; fi
  echo "=== $name: $*"
  timeout 60 "$@" >"$OUTDIR/$name.log" 2>&1
  local rc=$?
  cat "$OUTDIR/$name.log"
  if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -Eq "$regex" "$OUTDIR/$name.log"; then
    echo "CHECK $name ok"
  else
    echo "CHECK $name FAILED (exit $rc)"
    failed=1
  fi
}
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee "$OUTDIR/gpu.txt"
"$TAP" --version

# The checks run in the order of what a short lease must not miss (with DEADLINE, the rest is
# skipped): the losses against the CPU's, the two MFU figures of issue #18 and their kernel
# breakdowns, the kernel tests, then everything else.
# GPT-2 124M shapes on the embedded corpus (byte tokens inside the 50257 vocabulary).
"$TAP" data prepare inputs/corpus/licenses.txt -o "$OUTDIR/data" >/dev/null
GPT2=(train -c inputs/default.toml --train-data "$OUTDIR/data/corpus_train.bin" --val-data "$OUTDIR/data/corpus_val.bin" --val-every 0 --metrics-file ""
      --n-layer 12 --n-head 12 --d-model 768 --vocab-size 50257 --max-seq-len 1024 --seq-len 1024
      --lr 6e-4 --warmup-steps 10 --seed 1234 --peak-flops "$PEAK" --log-every 1)
# Losses of the first steps, B=1, to compare with the CPU build's run of the same flags.
for p in fp32 bf16; do
  check "loss_$p" 120 "$TAP" "${GPT2[@]}" --batch-size 1 --global-batch 1 --steps 3 --attention matrix --precision $p
done
# Speed, GPT-2 124M bf16: B=$BATCH x T=1024 per step, the matrix attention (the default).
check speed_bf16_matrix 180 "$TAP" "${GPT2[@]}" --batch-size "$BATCH" --global-batch "$BATCH" --steps "$STEPS" \
  --attention matrix --precision bf16

# The Llama-style preset closest to 1B (Llama 3.2 1B: GQA, SwiGLU, RoPE, 128256 vocabulary), 4 x 2048,
# bf16 (84 GB planned by `tapestry plan --model llama3.2-1b -b 4 -t 2048 --precision bf16`).
check speed_llama1b_bf16 240 "$TAP" train --model llama3.2-1b \
  --train-data "$OUTDIR/data/corpus_train.bin" --val-data "$OUTDIR/data/corpus_val.bin" --val-every 0 --metrics-file "" \
  --seq-len 2048 --batch-size 4 --global-batch 4 --steps "$STEPS" --lr 3e-4 --warmup-steps 10 --seed 1234 \
  --peak-flops "$PEAK" --log-every 1 --attention matrix --precision bf16

# Where the time goes: fenced timers around forward, backward, update, every BLAS call and every
# Kokkos kernel.
check bench_step_bf16_kernels 180 "$TAP" bench step --n-layer 12 --n-head 12 --d-model 768 --vocab-size 50257 \
  --max-seq-len 1024 -t 1024 -b "$BATCH" --warmup 2 --iters 3 --precision bf16 --attention matrix \
  --peak-flops "$PEAK" --kernel-times

# The kernel tests on the GPU (the same Catch2 tests as on the CPU): every kernel changed since the
# last GPU run is in them.
check test_kernels 240 "$BUILD/tests/test_kernels"

# The same breakdown for the Llama 3.2 1B preset at 4 x 2048: RoPE (from its table), RMSNorm,
# SwiGLU, GQA attention, the fused cross-entropy writing its gradient in bf16, the fused AdamW.
check bench_step_llama1b_kernels 240 "$TAP" bench step --model llama3.2-1b -t 2048 -b 4 --warmup 2 --iters 3 \
  --precision bf16 --attention matrix --peak-flops "$PEAK" --kernel-times

# bf16 activation storage (issue #18): speed, and memory beside fp32 activations (bench step's allocation).
check speed_bf16_matrix_bf16act 180 "$TAP" "${GPT2[@]}" --batch-size "$BATCH" --global-batch "$BATCH" --steps "$STEPS" \
  --attention matrix --precision bf16 --activations bf16
for a in fp32 bf16; do
  check "bench_step_act_$a" 180 "$TAP" bench step --n-layer 12 --n-head 12 --d-model 768 --vocab-size 50257 \
    --max-seq-len 1024 -t 1024 -b "$BATCH" --warmup 2 --iters 5 --precision bf16 --activations $a --peak-flops "$PEAK"
done
# More speeds: fp32, bf16 at twice the batch, and a few steps of the tiled attention.
check speed_fp32_matrix 180 "$TAP" "${GPT2[@]}" --batch-size "$BATCH" --global-batch "$BATCH" --steps "$STEPS" \
  --attention matrix --precision fp32
check speed_bf16_matrix_2x 180 "$TAP" "${GPT2[@]}" --batch-size $((2 * BATCH)) --global-batch $((2 * BATCH)) \
  --steps "$STEPS" --attention matrix --precision bf16
check speed_bf16_tiled 180 "$TAP" "${GPT2[@]}" --batch-size "$BATCH" --global-batch "$BATCH" --steps 3 \
  --attention tiled --precision bf16
# cuBLAS: fp32 and bf16 (tensor cores) at 8192^3, random data.
check gemm_fp32 60 "$TAP" bench gemm --size 8192 --iters 10 --precision fp32
check gemm_bf16 60 "$TAP" bench gemm --size 8192 --iters 20 --precision bf16

# NCCL through Tapestry's reducer on this node's GPUs (1 GPU: the path runs; busbw needs 2+).
check allreduce_nccl 120 "$TAP" bench allreduce --collectives nccl -b 1048576 -e 268435456 -f 4 -n 20 -o "$OUTDIR/allreduce.json"

# PyTorch on the same card (where it is installed): GPT-2 124M bf16 with its fused attention, the
# same B and T, MFU by Tapestry's FLOP count. Without the bundle's library path (tools/gpu_run.sh).
if python3 -c "import torch" 2>/dev/null; then
  check torch_reference 180 env -u LD_LIBRARY_PATH python3 tools/torch_gpt2_reference.py --batch "$BATCH" \
    --steps "$STEPS" --peak "$PEAK"
fi

# The model and collective tests.
check test_train 240 "$BUILD/tests/test_train"
check test_collectives 120 "$BUILD/tests/test_collectives"

# Bad input: no GPU visible, and two ranks on one GPU.
expect_error bad_no_gpu 'error: rank 0 on node .*: no CUDA device visible' \
  env CUDA_VISIBLE_DEVICES= "$TAP" bench gemm --size 64
expect_error bad_two_ranks_one_gpu 'error: rank 1 on node .*: GPU 0 is already used by local rank 0' \
  env CUDA_VISIBLE_DEVICES=0 ${MPIRUN:-mpirun} --oversubscribe --bind-to none -np 2 "$TAP" bench gemm --size 64

echo "=== summary"
grep -h "step .*/.* | loss" "$OUTDIR"/loss_*.log "$OUTDIR"/speed_*.log 2>/dev/null | sed -n '1,200p' >"$OUTDIR/steps.txt"
for f in "$OUTDIR"/speed_*.log; do echo "$(basename "$f" .log): $(grep 'step' "$f" | tail -n 1)"; done
grep -h "^torch_reference:" "$OUTDIR"/torch_reference.log 2>/dev/null
exit $failed
