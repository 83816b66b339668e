#pragma once
/// \file
/// \brief Token + learned position embedding.

#include <vector>

#include "tapestry/core/views.hpp"

namespace tapestry::kernels {

/// out (B, T, C) = wte[tokens(b, t)] + wpe[t]; tokens (B, T), wte (Vp, C), wpe (maxT, C).
/// Vocabulary-parallel: wte holds rows [vocab_begin, vocab_begin + wte.extent(0)) of the table and
/// tokens outside them contribute 0; the position term is added only `with_position` (so that a
/// sum over the shards counts it once; wpe may be empty then).
template <class T>
void embedding_forward(const ExecSpace& exec, View3<T> out, ConstTokenView tokens, In2<T> wte,
                       In2<T> wpe, int vocab_begin = 0, bool with_position = true);

/// \brief A batch's token positions grouped by table row, for the scatter of the embedding
/// backward: one group per row that occurs (rows in increasing order), each group's positions
/// b * T + t in increasing order. Built on the host from the tokens the batch was read from.
struct TokenRows {
  Kokkos::View<int*, Layout, MemSpace> row;    ///< table row (token - vocab_begin) of each group
  Kokkos::View<int*, Layout, MemSpace> start;  ///< groups + 1 offsets into pos
  Kokkos::View<int*, Layout, MemSpace> pos;    ///< positions, grouped
  int groups = 0;

  /// Keeps the tokens in [vocab_begin, vocab_begin + rows); the others belong to other shards.
  void build(const ExecSpace& exec, const std::vector<int>& tokens, int vocab_begin, int rows);
};

/// dwte (rows, C) += scatter of dout (B, T, C) for the tokens of `rows_of` (built with the same
/// vocab_begin and rows); dwpe (maxT, C) += sum over the batch (skipped when dwpe is empty). Deterministic (no atomics): one
/// team per row, adding its positions in order.
template <class T>
void embedding_backward(const ExecSpace& exec, View2<T> dwte, View2<T> dwpe, In3<T> dout, const TokenRows& rows_of);

}  // namespace tapestry::kernels
