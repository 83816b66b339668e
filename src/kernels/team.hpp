#pragma once
// One team per row: the row's columns spread over the team's threads (coalesced on GPUs; one
// thread in order on hosts, where a team has one thread). Private to the kernels.

#include <type_traits>

#include "tapestry/core/views.hpp"

namespace tapestry::kernels::detail {

using TeamPolicy = Kokkos::TeamPolicy<ExecSpace>;
using Member = TeamPolicy::member_type;

/// `rows` teams of the size Kokkos picks for the backend.
inline TeamPolicy team_per_row(const ExecSpace& exec, int rows) { return TeamPolicy(exec, rows, Kokkos::AUTO); }

/// On hosts a team's reductions run blocks of kBlock elements over its threads (one thread, or a
/// few), and each block keeps kLanes partial results: the loop then vectorizes and its loads
/// overlap, where one running result is a chain of dependent adds (a row of attention scores or a
/// column of a norm's gradient took 2.4-6 ns per element; measured in docs/performance.md). The
/// order is fixed, so results are deterministic; they differ from one running sum in rounding. On
/// GPUs the team's threads reduce as before.
inline constexpr bool kHostTeams = std::is_same_v<ExecSpace::memory_space, Kokkos::HostSpace>;
inline constexpr int kLanes = 8, kBlock = 1024;

/// max over [0, n) of f(i), on every thread of the team.
template <class T, class F> KOKKOS_INLINE_FUNCTION T team_max(const Member& m, int n, T init, const F& f) {
  T r = init;
  if constexpr (kHostTeams) {
    Kokkos::parallel_reduce(
        Kokkos::TeamThreadRange(m, (n + kBlock - 1) / kBlock),
        [&](int b, T& acc) {
          const int i0 = b * kBlock, i1 = i0 + kBlock < n ? i0 + kBlock : n;
          T lane[kLanes];
          for (int j = 0; j < kLanes; ++j) lane[j] = init;
          int i = i0;
          for (; i + kLanes <= i1; i += kLanes)
            for (int j = 0; j < kLanes; ++j) {
              const T x = f(i + j);
              lane[j] = x > lane[j] ? x : lane[j];
            }
          for (; i < i1; ++i) {
            const T x = f(i);
            lane[0] = x > lane[0] ? x : lane[0];
          }
          for (int j = 0; j < kLanes; ++j) acc = lane[j] > acc ? lane[j] : acc;
        },
        Kokkos::Max<T>(r));
  } else {
    Kokkos::parallel_reduce(
        Kokkos::TeamThreadRange(m, n), [&](int i, T& acc) { const T x = f(i); acc = x > acc ? x : acc; },
        Kokkos::Max<T>(r));
  }
  return n > 0 ? r : init;
}

/// sum over [i0, i1) of f(i) in kLanes partial sums, added pairwise at the end: a loop that
/// vectorizes on hosts (one thread's work; team_sum's blocks and the tiled attention's dot products).
template <class T, class F> KOKKOS_INLINE_FUNCTION T lane_sum(int i0, int i1, const F& f) {
  static_assert(kLanes == 8, "the pairwise sum below adds 8 lanes");
  T lane[kLanes] = {};
  int i = i0;
  for (; i + kLanes <= i1; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lane[j] += f(i + j);
  for (; i < i1; ++i) lane[0] += f(i);
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

/// sum over [0, n) of f(i), on every thread of the team. f is called once per i (it may store).
template <class T, class F> KOKKOS_INLINE_FUNCTION T team_sum(const Member& m, int n, const F& f) {
  T r = 0;
  if constexpr (kHostTeams) {
    Kokkos::parallel_reduce(
        Kokkos::TeamThreadRange(m, (n + kBlock - 1) / kBlock),
        [&](int b, T& acc) { acc += lane_sum<T>(b * kBlock, b * kBlock + kBlock < n ? b * kBlock + kBlock : n, f); },
        r);
  } else {
    Kokkos::parallel_reduce(Kokkos::TeamThreadRange(m, n), [&](int i, T& acc) { acc += f(i); }, r);
  }
  return r;
}

}  // namespace tapestry::kernels::detail
