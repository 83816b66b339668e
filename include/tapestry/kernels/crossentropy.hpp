#pragma once
/// \file
/// \brief Fused softmax + cross-entropy over a (possibly padded) vocabulary.

#include "tapestry/core/views.hpp"

namespace tapestry::kernels {

/// probs (N, Vp) = softmax over the first V columns of logits (padded columns get 0; probs may
/// alias logits); losses (N) = -log probs[target].
template <class T>
void softmax_xent_forward(const ExecSpace& exec, View2<T> probs, View1<T> losses, In2<T> logits,
                          In1<int> targets, int V);

/// dlogits (N, Vp) = dloss * (probs - onehot(target)), padded columns 0 (overwritten; may alias
/// probs). This is the gradient of dloss * sum_n losses(n).
template <class T>
void softmax_xent_backward(const ExecSpace& exec, View2<T> dlogits, In2<T> probs,
                           In1<int> targets, double dloss, int V);

}  // namespace tapestry::kernels
