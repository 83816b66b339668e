#pragma once
/// \file
/// \brief Fused softmax + cross-entropy over a (possibly padded) vocabulary.

#include <cstdint>

#include "tapestry/core/views.hpp"

namespace tapestry::kernels {

/// probs (N, Vp) = softmax over the first V columns of logits (padded columns get 0; probs may
/// alias logits); losses (N) = -log probs[target]. A row whose target is negative is ignored:
/// its loss is 0, and so is its gradient in softmax_xent_backward().
template <class T>
void softmax_xent_forward(const ExecSpace& exec, View2<T> probs, View1<T> losses, In2<T> logits,
                          In1<int> targets, int V);

/// dlogits (N, Vp) = dloss * (probs - onehot(target)), padded columns 0 (overwritten; may alias
/// probs). This is the gradient of dloss * sum_n losses(n). Vocabulary-parallel: the columns are
/// global columns [vocab_begin, vocab_begin + Vp) and columns >= V are padding.
template <class T>
void softmax_xent_backward(const ExecSpace& exec, View2<T> dlogits, In2<T> probs,
                           In1<int> targets, double dloss, int V, int vocab_begin = 0);

/// softmax_xent_forward then softmax_xent_backward (vocab_begin 0) in one kernel, with the same
/// results bit for bit: losses (N), and dlogits (N, Vp) = dloss * (softmax - onehot(target)),
/// padded columns 0; dlogits may alias logits. One pass over each row fewer, and no probabilities
/// left behind (the output layer's backward run in the forward needs only the gradient).
template <class T>
void softmax_xent_fused(const ExecSpace& exec, View2<T> dlogits, View1<T> losses, In2<T> logits, In1<int> targets,
                        int V, double dloss);

/// softmax_xent_fused for bf16 products: the gradient is written only as its bf16 rounding, into
/// grad16 (N x Vp, row-major; W = std::uint16_t: the 16 bits, float: the rounded values), which
/// is what the products read (Blas::Held::copy). `scratch` (N, Vp; may alias logits) is left
/// holding intermediate values.
template <class W>
void softmax_xent_fused_bf16(const ExecSpace& exec, View2<float> scratch, View1<float> losses, In2<float> logits,
                             In1<int> targets, int V, double dloss, W* grad16);

/// \brief Vocabulary-parallel softmax cross-entropy (Megatron's): each rank holds the logits of
/// global columns [vocab_begin, vocab_begin + Vl); the full row is never gathered.
/// Step 1, per rank: stats (N, 3) = {max over this rank's real columns (-1e30 if none),
/// sum of exp(logit - that max), the target's logit if this rank holds it, else 0}.
template <class T>
void xent_shard_stats(const ExecSpace& exec, View2<T> stats, In2<T> logits, In1<int> targets, int V,
                      int vocab_begin);
/// Step 2, after every rank has every rank's stats, all_stats (R, N, 3): probs (N, Vl) = softmax
/// over the whole vocabulary (padding 0; may alias logits), losses (N) = logsumexp - target logit
/// (0 where the target is negative: an ignored row).
template <class T>
void xent_shard_finish(const ExecSpace& exec, View2<T> probs, View1<T> losses, In2<T> logits,
                       In3<T> all_stats, In1<int> targets, int V, int vocab_begin);

}  // namespace tapestry::kernels
