#pragma once
// The norms' parameter gradients: per column, a sum over the rows, in two passes (layernorm_backward,
// rmsnorm_backward). Private to the kernels.

#include <stdexcept>
#include <string>

#include "tapestry/kernels/layernorm.hpp"
#include "team.hpp"

namespace tapestry::kernels::detail {

/// Throws unless scratch is at least (norm_scratch_rows(N), 2 C). The backward kernels call it
/// before they write anything.
template <class T> void check_norm_scratch(const std::string& kernel, int N, int C, const View2<T>& scratch) {
  if (scratch.extent(0) < norm_scratch_rows(std::size_t(N)) || scratch.extent(1) < 2 * std::size_t(C))
    throw std::invalid_argument(kernel + ": scratch is not (norm_scratch_rows(N), 2 C)");
}

/// out0(c) += sum over rows n < N of acc[0], and out1(c) of acc[1] (K = 2), where term(n, c, acc)
/// adds row n's terms of column c into acc[K]. Each block of kNormRowBlock rows sums its columns
/// (consecutive threads, consecutive columns) into scratch (norm_scratch_rows(N), 2 C), then each
/// column sums the blocks in order: a fixed order, no atomics. Kernels `label` and `label`_sum.
/// The caller checks the scratch first (check_norm_scratch).
template <int K, class T, class F>
void column_sums(const ExecSpace& exec, const std::string& label, int N, int C, View2<T> scratch, const F& term,
                 View1<T> out0, View1<T> out1 = {}) {
  static_assert(K == 1 || K == 2, "one or two sums per column");
  const int NB = int(norm_scratch_rows(std::size_t(N)));
  Kokkos::parallel_for(label, team_per_row(exec, NB), KOKKOS_LAMBDA(const Member& tm) {
    const int b = tm.league_rank(), n0 = b * kNormRowBlock, n1 = n0 + kNormRowBlock < N ? n0 + kNormRowBlock : N;
    T* const part = &scratch(b, 0);
    Kokkos::parallel_for(Kokkos::TeamThreadRange(tm, C), [&](int c) {
      T acc[K] = {};
      for (int n = n0; n < n1; ++n) term(n, c, acc);
      for (int k = 0; k < K; ++k) part[k * C + c] = acc[k];
    });
  });
  Kokkos::parallel_for(
      label + "_sum", Kokkos::RangePolicy<ExecSpace>(exec, 0, C), KOKKOS_LAMBDA(int c) {
        T acc[K] = {};
        for (int b = 0; b < NB; ++b)
          for (int k = 0; k < K; ++k) acc[k] += scratch(b, k * C + c);
        out0(c) += acc[0];
        if (K == 2) out1(c) += acc[K - 1];  // not constexpr: a CUDA lambda captures out1 in either case
      });
}

}  // namespace tapestry::kernels::detail
