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

/// \brief A run of elements the fused AdamW updates: parameters [param, param + n), moments and
/// gradients [local, local + n), with weight decay when `decay` (runs never cross a tensor).
struct AdamWChunk {
  std::size_t param = 0, local = 0;
  std::uint32_t n = 0, decay = 0;
};

/// Largest run of one AdamWChunk: a launch's unit of work (a team on a GPU).
inline constexpr std::uint32_t kAdamWChunk = 1u << 14;

/// \brief What the fused AdamW writes besides the parameters and moments, in the same pass.
template <class W> struct AdamWExtras {
  bool zero_grads = false;  ///< set each gradient it read to 0 (the next step's zero_grad)
  /// The new parameters rounded to bf16 at their own index (W = std::uint16_t: the 16 bits; float:
  /// the rounded value); null: none.
  W* copy = nullptr;
};

/// AdamW over every chunk in one launch (apex's multi-tensor apply, PyTorch's fused AdamW): each
/// element updated exactly as adamw_update updates it, weight decay s.weight_decay where the
/// chunk says so, 0 elsewhere; plus `extras`.
template <class W>
void adamw_fused(const ExecSpace& exec, Kokkos::View<const AdamWChunk*, Layout, MemSpace> chunks, View1<float> param,
                 View1<float> m, View1<float> v, View1<float> grad, const AdamWStep& s, const AdamWExtras<W>& extras);

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
