#pragma once
/// \file
/// \brief Token + learned position embedding.

#include "tapestry/core/views.hpp"

namespace tapestry::kernels {

/// out (B, T, C) = wte[tokens(b, t)] + wpe[t]; tokens (B, T), wte (Vp, C), wpe (maxT, C).
template <class T>
void embedding_forward(const ExecSpace& exec, View3<T> out, ConstTokenView tokens, In2<T> wte,
                       In2<T> wpe);

/// dwte (Vp, C) += scatter of dout; dwpe (maxT, C) += sum over the batch. Deterministic (no atomics).
template <class T>
void embedding_backward(const ExecSpace& exec, View2<T> dwte, View2<T> dwpe, In3<T> dout,
                        ConstTokenView tokens);

}  // namespace tapestry::kernels
