#pragma once
/// \file
/// \brief AdamW update and the reductions behind global gradient-norm clipping.

#include <cstdint>

#include "tapestry/core/views.hpp"

namespace tapestry::kernels {

/// \brief Hyper-parameters of one AdamW step (decoupled weight decay, bias-corrected moments).
struct AdamWStep {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  std::int64_t t = 1;        ///< 1-based step count, for bias correction
  double grad_scale = 1.0;   ///< multiplies every gradient first (clipping)
};

/// param, m, v (n) updated in place from grad (n).
template <class T>
void adamw_update(const ExecSpace& exec, View1<T> param, View1<T> m, View1<T> v, In1<T> grad,
                  const AdamWStep& s);

/// sum of x^2, accumulated in double.
template <class T> double sum_squares(const ExecSpace& exec, In1<T> x);

/// DiLoCo's pseudo-gradient: delta (n) = outer - local.
template <class T>
void pseudo_gradient(const ExecSpace& exec, In1<T> outer, In1<T> local, View1<T> delta);

/// \brief One outer SGD step of DiLoCo on the averaged pseudo-gradient.
struct OuterStep {
  double lr = 0.7;
  double momentum = 0.9;
  bool nesterov = true;
  double delta_scale = 1.0;  ///< multiplies delta first (1 / sites when delta is a sum)
};

/// With g = delta * delta_scale: momentum = mu * momentum + g; outer -= lr * (nesterov ?
/// g + mu * momentum : momentum) (PyTorch's SGD with dampening 0). outer, momentum, delta: n.
template <class T>
void outer_sgd_update(const ExecSpace& exec, View1<T> outer, View1<T> momentum, In1<T> delta, const OuterStep& s);

/// Streaming DiLoCo's merge of a fragment whose exchange overlapped inner steps: local (n) =
/// mix * local + (1 - mix) * outer.
template <class T>
void outer_merge(const ExecSpace& exec, View1<T> local, In1<T> outer, double mix);

/// Clip factor for a global norm: min(1, max_norm / norm); 1 when max_norm <= 0.
double clip_factor(double norm, double max_norm);

}  // namespace tapestry::kernels
