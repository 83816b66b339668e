#pragma once
/// \file
/// \brief Causal multi-head self-attention with softmax, from packed QKV; grouped-query
/// attention (GQA/MQA) when there are fewer key/value heads than query heads.

#include "tapestry/core/views.hpp"
#include "tapestry/kernels/blas.hpp"

namespace tapestry::kernels {

/// qkv (B, T, (NH + 2 KV) hs) packed as [q | k | v], heads contiguous inside each (KV = n_kv_head
/// key/value heads, 0 meaning n_head; query head h uses kv head h / (NH / KV)); out (B, T, NH hs);
/// att (B, NH, T, T) softmax probabilities, saved for backward (zero above the diagonal).
/// The two products (Q K^T and att V) go to the BLAS, batched over heads; the masked softmax is a
/// Kokkos kernel.
/// Document masking: doc_pos (B*T, row-major (B, T)), when not empty, is each token's position in
/// its document (0 at a document's first token); query t then attends only to keys
/// t - doc_pos(t) .. t of its own document (block-causal). Empty: causal over the whole row.
/// The products skip what the causal mask removes in blocks: query rows in blocks of
/// causal_block (0: kCausalBlock) meet only the keys up to their block's end; one block when T is
/// below two blocks. The results do not depend on it beyond the BLAS's rounding.
inline constexpr int kCausalBlock = 256;
template <class T>
void attention_forward(const Blas& blas, View3<T> out, View4<T> att, In3<T> qkv, int n_head, int n_kv_head = 0,
                       In1<int> doc_pos = {}, int causal_block = 0);

/// dqkv (B, T, (NH + 2 KV) hs) overwritten; scratch (B, NH, T, T) is clobbered. The mask is the
/// forward's: att is 0 outside it, and so is every gradient through those entries. causal_block
/// as in the forward.
template <class T>
void attention_backward(const Blas& blas, View3<T> dqkv, View4<T> scratch, In3<T> dout,
                        In3<T> qkv, In4<T> att, int n_head, int n_kv_head = 0, int causal_block = 0);

}  // namespace tapestry::kernels
