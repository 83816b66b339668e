#pragma once
// One team per row: the row's columns spread over the team's threads (coalesced on GPUs; one
// thread in order on hosts, where a team has one thread). Private to the kernels.

#include "tapestry/core/views.hpp"

namespace tapestry::kernels::detail {

using TeamPolicy = Kokkos::TeamPolicy<ExecSpace>;
using Member = TeamPolicy::member_type;

/// `rows` teams of the size Kokkos picks for the backend.
inline TeamPolicy team_per_row(const ExecSpace& exec, int rows) { return TeamPolicy(exec, rows, Kokkos::AUTO); }

/// max over [0, n) of f(i), on every thread of the team.
template <class T, class F> KOKKOS_INLINE_FUNCTION T team_max(const Member& m, int n, T init, const F& f) {
  T r = init;
  Kokkos::parallel_reduce(
      Kokkos::TeamThreadRange(m, n), [&](int i, T& acc) { const T x = f(i); acc = x > acc ? x : acc; },
      Kokkos::Max<T>(r));
  return n > 0 ? r : init;
}

/// sum over [0, n) of f(i), on every thread of the team.
template <class T, class F> KOKKOS_INLINE_FUNCTION T team_sum(const Member& m, int n, const F& f) {
  T r = 0;
  Kokkos::parallel_reduce(Kokkos::TeamThreadRange(m, n), [&](int i, T& acc) { acc += f(i); }, r);
  return r;
}

}  // namespace tapestry::kernels::detail
