#pragma once
/// \file
/// \brief Token + learned position embedding.

#include "tapestry/core/views.hpp"

namespace tapestry::kernels {

/// out (B, T, C) = wte[tokens(b, t)] + wpe[t]; tokens (B, T), wte (Vp, C), wpe (maxT, C).
/// Vocabulary-parallel: wte holds rows [vocab_begin, vocab_begin + wte.extent(0)) of the table and
/// tokens outside them contribute 0; the position term is added only `with_position` (so that a
/// sum over the shards counts it once).
template <class T>
void embedding_forward(const ExecSpace& exec, View3<T> out, ConstTokenView tokens, In2<T> wte,
                       In2<T> wpe, int vocab_begin = 0, bool with_position = true);

/// dwte (rows, C) += scatter of dout for the tokens in [vocab_begin, vocab_begin + rows);
/// dwpe (maxT, C) += sum over the batch. Deterministic (no atomics).
template <class T>
void embedding_backward(const ExecSpace& exec, View2<T> dwte, View2<T> dwpe, In3<T> dout,
                        ConstTokenView tokens, int vocab_begin = 0);

}  // namespace tapestry::kernels
