#pragma once
/// \file
/// \brief `tapestry bench step` and `tapestry bench gemm`.

#include <cstdint>
#include <ostream>
#include <vector>

#include "tapestry/core/config.hpp"
#include "tapestry/parallel/comm.hpp"

namespace tapestry::train {

struct StepBenchResult {
  double ms_per_step = 0, forward_ms = 0, backward_ms = 0, comm_ms = 0, update_ms = 0, gemm_ms = 0;
  double tokens_per_s = 0, gflops = 0, mfu = 0;
  double peak_rss_mib = 0, model_state_mib = 0, activation_mib = 0;
};

/// Data parallel over all ranks of `world` (B sequences per rank, gradients all-reduced); prints on
/// rank 0. Collective.
StepBenchResult bench_step(const BenchStepConfig& cfg, const parallel::Comm& world, std::ostream& out);

/// \brief One row of `bench allreduce`: one message size, both implementations.
struct AllreduceRow {
  std::int64_t bytes = 0, count = 0;
  double tapestry_us = 0, tapestry_algbw = 0, tapestry_busbw = 0;
  double mpi_us = 0, mpi_algbw = 0, mpi_busbw = 0;
  std::int64_t tapestry_wrong = 0, mpi_wrong = 0;
  double cross_site_bytes = 0;  ///< per call, all ranks (hierarchical)
};

/// nccl-tests style sweep over `world`: Tapestry's gradient reducer (bucketed, over the selected
/// collectives) against plain MPI_Allreduce. Times are the slowest rank's mean per call;
/// algbw = bytes / time, busbw = algbw * 2 (n - 1) / n. Prints a table on rank 0. Collective.
std::vector<AllreduceRow> bench_allreduce(const BenchAllreduceConfig& cfg, const parallel::Comm& world,
                                          std::ostream& out);

/// Writes and reads a checkpoint of `cfg.model` with AdamW state over `world` (each rank writes 1/P,
/// reads all parameters and its 1/P of the moments, as a ZeRO-1 resume does); prints seconds and
/// GB/s of file data on rank 0. Collective.
void bench_ckpt(const BenchCkptConfig& cfg, const parallel::Comm& world, std::ostream& out);

/// `tapestry plan`: prints each pipeline stage's bytes per rank (parameters, gradients, AdamW,
/// activations of one micro-batch, pipeline buffers), the largest rank, a node and the checkpoint.
void plan(const PlanConfig& cfg, std::ostream& out);

/// Returns GFLOP/s of the BLAS sgemm at M = N = K = cfg.size.
double bench_gemm(const BenchGemmConfig& cfg, std::ostream& out);

}  // namespace tapestry::train
