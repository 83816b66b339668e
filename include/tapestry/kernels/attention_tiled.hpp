#pragma once
/// \file
/// \brief Causal multi-head attention without the T x T matrix in global memory (FlashAttention-2
/// style): query and key/value tiles in Kokkos team scratch, an online softmax, and a backward that
/// recomputes the probabilities from the saved log-sum-exp. Meant for GPUs, where the T x T
/// matrices of attention_forward() do not fit; it runs on every Kokkos backend.

#include "tapestry/core/views.hpp"

namespace tapestry::kernels {

/// Rows and columns of one tile (query rows x key columns).
constexpr int kAttnTile = 32;

/// qkv (B, T, 3C) packed as in attention_forward(); out (B, T, C); lse (B, NH, T) the
/// log-sum-exp of each query row's scaled scores, saved for backward.
template <class T>
void attention_tiled_forward(const ExecSpace& exec, View3<T> out, View3<T> lse, In3<T> qkv, int n_head);

/// dqkv (B, T, 3C) overwritten from dout, qkv and the forward's out and lse. Deterministic: the key
/// tiles' dK, dV and the query tiles' dQ are each summed by one team, no atomics.
template <class T>
void attention_tiled_backward(const ExecSpace& exec, View3<T> dqkv, In3<T> dout, In3<T> qkv, In3<T> out,
                              In3<T> lse, int n_head);

}  // namespace tapestry::kernels
