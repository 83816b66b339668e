#pragma once
/// \file
/// \brief AdamW over the model's flat parameters, global-norm clipping, and the LR schedule.

#include <cstdint>
#include <utility>
#include <vector>

#include "tapestry/core/config.hpp"
#include "tapestry/core/views.hpp"
#include "tapestry/kernels/blas.hpp"
#include "tapestry/kernels/optim.hpp"
#include "tapestry/model/gpt.hpp"

namespace tapestry::optim {

/// Learning rate at 0-based `step`: linear warmup to cfg.lr over warmup_steps, then cosine decay to
/// cfg.lr * min_lr_ratio at `total_steps`.
double lr_at(const OptimConfig& cfg, int step, int total_steps);

/// \brief What an AdamW step also does in its one pass over memory.
struct FusedStep {
  /// Sets the gradients it read to 0 (they are then ready for the next step's accumulation).
  bool zero_grads = false;
  /// Declares the parameters as this Blas's weights (Blas::weights) and, under bf16 products,
  /// writes the bf16 copy of [begin, end) as it updates them: those are not rounded again before
  /// the next declaration. Null: nothing declared.
  const kernels::Blas* blas = nullptr;
};

/// \brief First and second moments for the parameters in [begin, end) of the flat buffer (all of
/// them, or one ZeRO-1 shard); weight decay only where the tensor says so.
class AdamW {
 public:
  AdamW(const OptimConfig& cfg, const std::vector<model::ParamTensor>& tensors, std::size_t begin,
        std::size_t end);

  /// One update of params[begin, end) with learning rate `lr`, in one launch over every tensor.
  /// `grads` holds the gradients of that range (element 0 belongs to parameter `begin`) and is
  /// multiplied by `grad_scale` first.
  void step(const ExecSpace& exec, View1<float> params, View1<float> grads, double lr, double grad_scale,
            const FusedStep& fused = {});
  std::size_t begin() const { return begin_; }
  std::size_t end() const { return end_; }

  std::int64_t steps_taken() const { return t_; }
  void set_steps_taken(std::int64_t t) { t_ = t; }
  /// Moments of [begin, end).
  View1<float> m() const { return m_; }
  View1<float> v() const { return v_; }
  std::size_t state_bytes() const { return 2 * m_.span() * sizeof(float); }

 private:
  OptimConfig cfg_;
  std::vector<model::ParamTensor> tensors_;
  std::size_t begin_, end_;
  View1<float> m_, v_;
  Kokkos::View<const kernels::AdamWChunk*, Layout, MemSpace> chunks_;  ///< [begin, end) by tensor, in runs
  std::vector<std::pair<std::size_t, std::size_t>> covered_;          ///< the parameters the runs cover
  std::int64_t t_ = 0;
};

/// \brief Global L2 norm of the gradients (every element once) and the clip factor it implies.
double grad_norm(const ExecSpace& exec, View1<float> grads);

}  // namespace tapestry::optim
