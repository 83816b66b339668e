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

/// qkv (B, T, (NH + 2 KV) hs) packed as in attention_forward(): [q: NH hs | k: KV hs | v: KV hs],
/// KV = n_kv_head (0: = n_head); query head h uses kv head h / (NH / KV) (grouped-query attention).
/// out (B, T, C = NH hs); lse (B, NH, T) the log-sum-exp of each query row's scaled scores, saved
/// for backward. doc_pos (B*T), when not empty, masks attention to each token's own document, as
/// in attention_forward(). Throws std::invalid_argument when the extents do not fit.
template <class T>
void attention_tiled_forward(const ExecSpace& exec, View3<T> out, View3<T> lse, In3<T> qkv, int n_head,
                             int n_kv_head = 0, In1<int> doc_pos = {});

/// dqkv (B, T, (NH + 2 KV) hs) overwritten from dout, qkv and the forward's out and lse.
/// Deterministic: a key tile's dK, dV (summed over the query heads of its group, in order) and a
/// query tile's dQ are each summed by one team, no atomics.
/// doc_pos: the forward's.
template <class T>
void attention_tiled_backward(const ExecSpace& exec, View3<T> dqkv, In3<T> dout, In3<T> qkv, In3<T> out,
                              In3<T> lse, int n_head, int n_kv_head = 0, In1<int> doc_pos = {});

}  // namespace tapestry::kernels
