#pragma once
/// \file
/// \brief Causal multi-head self-attention with softmax (GPT-2), from packed QKV.

#include "tapestry/core/views.hpp"
#include "tapestry/kernels/blas.hpp"

namespace tapestry::kernels {

/// qkv (B, T, 3C) packed as [q | k | v], heads contiguous inside each; out (B, T, C);
/// att (B, NH, T, T) softmax probabilities, saved for backward (zero above the diagonal).
/// The two products (Q K^T and att V) go to the BLAS, batched over heads; the masked softmax is a
/// Kokkos kernel.
template <class T>
void attention_forward(const Blas& blas, View3<T> out, View4<T> att, In3<T> qkv, int n_head);

/// dqkv (B, T, 3C) overwritten; scratch (B, NH, T, T) is clobbered.
template <class T>
void attention_backward(const Blas& blas, View3<T> dqkv, View4<T> scratch, In3<T> dout,
                        In3<T> qkv, In4<T> att, int n_head);

}  // namespace tapestry::kernels
