#pragma once
/// \file
/// \brief The training loop: data -> model -> AdamW, with progress lines, metrics and validation.

#include <ostream>
#include <vector>

#include "tapestry/core/config.hpp"

namespace tapestry::train {

/// \brief One record per optimizer step.
struct StepRecord {
  int step = 0;
  double loss = 0, lr = 0, grad_norm = 0, ms = 0, tokens_per_s = 0, mfu = 0;
};

/// \brief Validation loss after `step` optimizer steps.
struct ValRecord {
  int step = 0;
  double loss = 0;
};

struct TrainResult {
  std::vector<StepRecord> steps;
  std::vector<ValRecord> val;
};

/// \brief Trains per `cfg` on one rank; prints progress to `out`.
/// Throws tapestry::Error on bad input and on a non-finite loss.
TrainResult run_training(const TrainConfig& cfg, std::ostream& out);

}  // namespace tapestry::train
