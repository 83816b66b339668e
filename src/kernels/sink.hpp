#pragma once
// Where a kernel writes its output: into the values themselves (Floats), or only as their bf16
// copy (Rounded: see store_rounded in bf16.hpp). The kernels that can write either take a sink
// and have one body, so the copy is bitwise the fp32 output rounded. Private to the kernels.

#include <cstddef>

#include "tapestry/kernels/bf16.hpp"

namespace tapestry::kernels::detail {

/// P: the stored type (T for Floats; std::uint16_t or float for Rounded); rows `ld` apart.
template <class P, bool Round> struct Sink {
  P* p;
  std::size_t ld;
  /// The start of row r, to write through put (hoisted out of a row's inner loop).
  KOKKOS_INLINE_FUNCTION P* row(int r) const { return p + std::size_t(r) * ld; }
  template <class T> KOKKOS_INLINE_FUNCTION void put(P& d, T x) const {
    if constexpr (Round) store_rounded(d, x);
    else d = x;
  }
  template <class T> KOKKOS_INLINE_FUNCTION void operator()(int r, int c, T x) const { put(row(r)[c], x); }
  template <class T> KOKKOS_INLINE_FUNCTION void operator()(std::size_t i, T x) const { put(p[i], x); }
};
template <class T> using Floats = Sink<T, false>;
template <class W> using Rounded = Sink<W, true>;

}  // namespace tapestry::kernels::detail
