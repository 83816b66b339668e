#include "tapestry/optim/adamw.hpp"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "tapestry/kernels/optim.hpp"

namespace tapestry::optim {

double lr_at(const OptimConfig& cfg, int step, int total_steps) {
  if (step < cfg.warmup_steps) return cfg.lr * double(step + 1) / double(cfg.warmup_steps);
  const double min_lr = cfg.lr * cfg.min_lr_ratio;
  const int decay_steps = total_steps - cfg.warmup_steps;
  if (decay_steps <= 0) return cfg.lr;
  const double ratio = std::min(1.0, double(step - cfg.warmup_steps) / double(decay_steps));
  const double coeff = 0.5 * (1.0 + std::cos(M_PI * ratio));
  return min_lr + coeff * (cfg.lr - min_lr);
}

AdamW::AdamW(const OptimConfig& cfg, const std::vector<model::ParamTensor>& tensors, std::size_t begin,
             std::size_t end)
    : cfg_(cfg), tensors_(tensors), begin_(begin), end_(end), m_("tapestry::adam_m", end - begin),
      v_("tapestry::adam_v", end - begin) {
  // Each tensor's overlap with [begin, end) in runs of at most kAdamWChunk; padding past the last
  // tensor is never updated.
  std::vector<kernels::AdamWChunk> runs;
  for (const auto& t : tensors_) {
    const std::size_t lo = std::max(t.offset, begin_), hi = std::min(t.offset + t.size, end_);
    for (std::size_t a = lo; a < hi; a += kernels::kAdamWChunk) {
      kernels::AdamWChunk c;
      c.param = a;
      c.local = a - begin_;
      c.n = std::uint32_t(std::min<std::size_t>(kernels::kAdamWChunk, hi - a));
      c.decay = t.decay ? 1 : 0;
      runs.push_back(c);
      if (!covered_.empty() && covered_.back().second == a) covered_.back().second = a + c.n;
      else covered_.emplace_back(a, a + c.n);
    }
  }
  Kokkos::View<kernels::AdamWChunk*, Layout, MemSpace> chunks("tapestry::adamw_chunks", runs.size());
  Kokkos::deep_copy(chunks, Kokkos::View<const kernels::AdamWChunk*, Layout, HostSpace, Kokkos::MemoryUnmanaged>(
                                runs.data(), runs.size()));
  chunks_ = chunks;
}

void AdamW::step(const ExecSpace& exec, View1<float> params, View1<float> grads, double lr, double grad_scale,
                 const FusedStep& fused) {
  ++t_;
  kernels::AdamWStep s;
  s.lr = lr;
  s.beta1 = cfg_.beta1;
  s.beta2 = cfg_.beta2;
  s.eps = cfg_.eps;
  s.t = t_;
  s.grad_scale = grad_scale;
  s.weight_decay = cfg_.weight_decay;  // where a chunk's tensor decays
  kernels::Blas::Bf16Copy copy;
  if (fused.blas != nullptr) {
    fused.blas->weights(params.data(), params.extent(0));
    copy = fused.blas->weight_copy();
  }
  auto update = [&](auto* dst) {  // dst: the bf16 copy's words or rounded floats, or null
    kernels::AdamWExtras<std::remove_pointer_t<decltype(dst)>> x;
    x.zero_grads = fused.zero_grads, x.copy = dst;
    kernels::adamw_fused(exec, chunks_, params, m_, v_, grads, s, x);
  };
  if (!copy.visit(update)) update(static_cast<float*>(nullptr));
  if (copy.any())
    for (const auto& [lo, hi] : covered_) fused.blas->weights_rounded(lo, hi);
}

double grad_norm(const ExecSpace& exec, View1<float> grads) {
  return std::sqrt(kernels::sum_squares<float>(exec, grads));
}

}  // namespace tapestry::optim
