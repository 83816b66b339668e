#pragma once
/// \file
/// \brief Rotary position embedding in Hugging Face's rotate-half convention (LlamaForCausalLM):
/// inside a head of hd values, element i < hd/2 pairs with element i + hd/2.

#include <vector>

#include "tapestry/core/views.hpp"

namespace tapestry::kernels {

/// \brief Frequency scaling of RoPE.
struct RopeScaling {
  bool llama3 = false;              ///< false: none
  double factor = 8.0;              ///< Llama 3.1's defaults
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int original_context = 8192;      ///< original_max_position_embeddings
};

/// inv_freq (hd/2): 1 / theta^(2i/hd), then Llama 3's scaling when enabled (long wavelengths
/// divided by factor, medium ones interpolated), exactly as transformers' rope_init_fns.
std::vector<double> rope_inv_freq(int head_dim, double theta, const RopeScaling& scaling = {});

/// The rotation's cosines and sines for positions [0, P): cos(p, i) = cos(p * inv_freq(i)) and
/// sin(p, i) likewise, each (P, hd/2), the angle and its cosine and sine computed in double, then
/// rounded to T. Built once per model: rope_apply reads it for every layer, forward and backward.
template <class T>
void rope_table(const ExecSpace& exec, View2<T> cos, View2<T> sin, Kokkos::View<const double*, Layout, MemSpace> inv_freq);

/// Rotates, in place, columns [c0, c0 + nh*hd) of x (N, W), nh heads of hd (even) values, by
/// angle pos(n) * inv_freq(i), through the table of rope_table (pos(n) < its rows):
///   (x_i, x_{i+hd/2}) -> (x_i cos - x_{i+hd/2} sin, x_{i+hd/2} cos + x_i sin),  i < hd/2.
/// inverse = true rotates by -angle: the backward pass (the rotation is orthogonal), applied in
/// place to the gradient. pos (N) is each row's position (e.g. t, or reset per document).
template <class T>
void rope_apply(const ExecSpace& exec, View2<T> x, Kokkos::View<const int*, Layout, MemSpace> pos, In2<T> cos, In2<T> sin,
                int c0, int nh, int hd, bool inverse);

}  // namespace tapestry::kernels
