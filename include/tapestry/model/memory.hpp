#pragma once
/// \file
/// \brief Memory of one rank, computed from the model spec and the layout without allocating
/// anything: what `tapestry plan` prints for a sysadmin sizing a job.

#include <cstdint>
#include <vector>

#include "tapestry/core/config.hpp"
#include "tapestry/model/gpt.hpp"

namespace tapestry::model {

/// Bytes of the activations (and backward scratch) that a GPT of this spec allocates for one
/// (B, T) micro-batch on one rank: equal to GPT::activation_bytes() of the same construction
/// (tested), without building it.
std::size_t activation_bytes(const ModelConfig& m, int B, int T, int tp, bool sequence_parallel, const Stage& stage,
                             bool tiled, bool bf16_activations = false, bool bf16_attention = false,
                             bool bf16_linear_inputs = false);

/// \brief A job's layout and batch, as `tapestry plan` takes them.
struct PlanLayout {
  int tp = 1, pp = 1, dp = 1, zero = 0;
  bool sequence_parallel = false, tiled_attention = false;
  bool bf16 = false;      ///< --precision bf16: a bf16 copy of the weights; bf16 attention (GptOptions::bf16_attention)
  bool bf16_activations = false;  ///< --activations bf16: saved activations in bf16 (GptOptions)
  int batch_size = 1;     ///< sequences per micro-batch per rank
  int seq_len = 2048;
  int micro_batches = 1;  ///< per optimizer step (the pipeline's M)
  std::string pp_split;
};

/// \brief One pipeline stage's bytes per rank (every rank of a stage holds the same).
struct StagePlan {
  int first_layer = 0, layers = 0;
  std::int64_t params = 0;          ///< this rank's parameter elements (its TP part, its layers)
  std::int64_t param_bytes = 0;     ///< fp32 parameters, padded to a multiple of dp
  std::int64_t grad_bytes = 0;      ///< fp32 gradients (plus ZeRO-1's reduced shard)
  std::int64_t optimizer_bytes = 0; ///< AdamW m and v, fp32 (1/dp of them with ZeRO-1)
  std::int64_t activation_bytes = 0;  ///< one micro-batch (activations are recomputed per micro-batch)
  std::int64_t pipeline_bytes = 0;  ///< the 1F1B executor's message buffers for M micro-batches
  std::int64_t bf16_weight_bytes = 0;  ///< bf16: the weights rounded once per step (2 bytes each)
  std::int64_t total() const {
    return param_bytes + grad_bytes + optimizer_bytes + activation_bytes + pipeline_bytes + bf16_weight_bytes;
  }
};

/// Every stage's plan. Throws tapestry::Error for a layout the model cannot take (validate_tp,
/// stage_layers).
std::vector<StagePlan> plan_memory(const ModelConfig& m, const PlanLayout& layout);

}  // namespace tapestry::model
