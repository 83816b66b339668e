#pragma once
/// \file
/// \brief Streaming DiLoCo's schedule (Douillard et al. 2025) as pure data: which fragment of the
/// parameters is sent and merged after which inner step.

#include <cstddef>
#include <cstdint>
#include <utility>

namespace tapestry::train {

/// \brief When each fragment is sent and merged: pure data. Steps are 1-based inner steps; an
/// action "after step s" happens once step s's update is applied.
struct OuterSchedule {
  int H = 1;          ///< inner steps between two syncs of one fragment
  int fragments = 1;  ///< P (<= H)
  int delay = 0;      ///< tau: steps between a fragment's send and its merge (<= H / P)

  /// Step offset of fragment p inside a round: p * H / P (fragment 0: 0, i.e. steps H, 2H, ...).
  int offset(int p) const { return int(std::int64_t(p) * H / fragments); }
  /// The fragment whose pseudo-gradient is sent after step `step`, or -1.
  int sent_after(int step) const {
    if (step < 1) return -1;
    for (int p = 0; p < fragments; ++p)
      if (offset(p) == step % H) return p;
    return -1;
  }
  /// The fragment merged after step `step` (sent after step - delay), or -1. With delay 0 the
  /// same fragment is sent and merged after one step (send first).
  int merged_after(int step) const { return step - delay >= 1 ? sent_after(step - delay) : -1; }
  /// Elements [first, second) of a buffer of n that fragment p covers (contiguous, sizes differ by <= 1).
  std::pair<std::size_t, std::size_t> range(int p, std::size_t n) const {
    return {n * std::size_t(p) / std::size_t(fragments), n * std::size_t(p + 1) / std::size_t(fragments)};
  }
};

}  // namespace tapestry::train
