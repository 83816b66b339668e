#include "tapestry/optim/adamw.hpp"

#include <algorithm>
#include <cmath>

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
      v_("tapestry::adam_v", end - begin) {}

void AdamW::step(const ExecSpace& exec, View1<float> params, View1<float> grads, double lr,
                 double grad_scale) {
  ++t_;
  kernels::AdamWStep s;
  s.lr = lr;
  s.beta1 = cfg_.beta1;
  s.beta2 = cfg_.beta2;
  s.eps = cfg_.eps;
  s.t = t_;
  s.grad_scale = grad_scale;
  // Each tensor's overlap with [begin, end); padding past the last tensor is never updated.
  for (const auto& t : tensors_) {
    const std::size_t lo = std::max(t.offset, begin_), hi = std::min(t.offset + t.size, end_);
    if (lo >= hi) continue;
    s.weight_decay = t.decay ? cfg_.weight_decay : 0.0;
    const std::size_t n = hi - lo, local = lo - begin_;
    kernels::adamw_update(exec, View1<float>(params.data() + lo, n), View1<float>(m_.data() + local, n),
                          View1<float>(v_.data() + local, n), View1<float>(grads.data() + local, n), s);
  }
}

double grad_norm(const ExecSpace& exec, View1<float> grads) {
  return std::sqrt(kernels::sum_squares<float>(exec, grads));
}

}  // namespace tapestry::optim
