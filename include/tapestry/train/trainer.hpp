#pragma once
/// \file
/// \brief The training loop: data -> model -> gradient reduction -> AdamW, with progress lines,
/// metrics and validation. Data parallel (optionally ZeRO-1) over the grid's DP group.

#include <ostream>
#include <vector>

#include "tapestry/core/config.hpp"
#include "tapestry/parallel/comm.hpp"

namespace tapestry::train {

/// \brief One record per optimizer step (loss averaged over the global batch).
struct StepRecord {
  int step = 0;
  double loss = 0, lr = 0, grad_norm = 0, ms = 0, comm_ms = 0, tokens_per_s = 0, mfu = 0;
  double cross_site_mb = 0;  ///< bytes sent between sites this step (all ranks), MB
  /// Time this rank waited on cross-site traffic this step: DiLoCo's encoding and waiting for
  /// exchanges, the hierarchical reducer's cross-site part, or a flat reduction that spans sites.
  double xsite_wait_ms = 0;
  double utilization = 1;  ///< with sites: (step time - cross-site wait) / step time, on this rank
  bool computed = true;    ///< false: skipped by a straggling site (--outer-quota); loss repeats the last
  double data_ms = 0;        ///< this rank's time reading its batches (the data loader)
  std::vector<double> pp_idle;  ///< with pipeline stages: each stage's share of the step spent waiting
};

/// \brief Validation loss after `step` optimizer steps.
struct ValRecord {
  int step = 0;
  double loss = 0;
};

struct TrainResult {
  std::vector<StepRecord> steps;
  std::vector<ValRecord> val;
  double param_checksum = 0;  ///< sum of all parameters at the end (equal on every rank)
  std::size_t param_bytes = 0;      ///< this rank's parameters (its tensor-parallel part)
  std::size_t optimizer_bytes = 0;  ///< this rank's AdamW moments
  bool stopped = false;       ///< ended early on a stop signal, after saving
  std::vector<std::int64_t> site_steps_computed;  ///< --outer-quota: per site, as of the last merge
  std::int64_t steps_computed = 0;               ///< steps this rank computed (skipped ones not counted)
  std::vector<double> site_utilization;  ///< with sites: per site, mean over its ranks of (wall - cross-site waits) / wall
  double save_stall_s = 0;    ///< time the training loop spent on checkpoint saves (snapshots, waits, synchronous saves)
};

/// \brief Trains per `cfg` on `grid` (collective over its world). Progress goes to `out` on world
/// rank 0 only. Throws tapestry::Error on bad input (on the lowest failing rank; the others throw
/// parallel::PeerError) and on a non-finite loss.
TrainResult run_training(const TrainConfig& cfg, const parallel::ProcessGrid& grid, std::ostream& out);

}  // namespace tapestry::train
