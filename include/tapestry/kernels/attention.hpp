#pragma once
/// \file
/// \brief Causal multi-head self-attention with softmax, from packed QKV; grouped-query
/// attention (GQA/MQA) when there are fewer key/value heads than query heads.

#include <cstdint>

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

/// \brief bf16 buffers of the attention with bf16 products (16-bit words, row-major, at least as
/// long as said).
using Words = Kokkos::View<std::uint16_t*, Layout, MemSpace>;
struct AttentionBf16 {
  Words qkv;                 ///< (B T W) q, k, v rounded: written here from qkv unless qkv_written
  bool qkv_written = false;  ///< qkv holds them already (e.g. the bf16 copy kept for backward)
  Words probs;               ///< (B NH T T) the probabilities: the forward writes them, the backward reads them
  Words dout;                ///< backward only: (B T NH hs) scratch for the output's gradient
  Words dscores;             ///< backward only: (B NH T T) scratch for the scores' gradient
};

/// attention_forward with every product bf16 x bf16 -> fp32 (Blas::attention_gemm_bf16), as
/// mixed-precision trainers run them: scores = scale Q K^T in fp32 into `scores` (B, NH, T, T);
/// the softmax (fp32 inside) writes the probabilities only in bf16 (h.probs, kept for backward at
/// half the memory); out = probs V. No T x T matrix is rounded by a separate pass.
void attention_forward_bf16(const Blas& blas, View3<float> out, View4<float> scores, const AttentionBf16& h,
                            In3<float> qkv, int n_head, int n_kv_head = 0, In1<int> doc_pos = {}, int causal_block = 0);

/// attention_backward from attention_forward_bf16's h.probs: the output's gradient is rounded into
/// h.dout, the probabilities' gradient (fp32) goes to scratch (B, NH, T, T), the softmax backward
/// (fp32 inside) writes the scores' gradient in bf16 into h.dscores, and dQ, dK, dV come from bf16
/// products. qkv gives the shape and, unless h.qkv_written, the values rounded into h.qkv.
void attention_backward_bf16(const Blas& blas, View3<float> dqkv, View4<float> scratch, const AttentionBf16& h,
                             In3<float> dout, In3<float> qkv, int n_head, int n_kv_head = 0, int causal_block = 0);

}  // namespace tapestry::kernels
