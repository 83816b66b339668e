#pragma once
/// \file
/// \brief A contiguous run of a rank's part of a flat buffer and where it sits in the whole
/// model's flat buffer (llm.c order): the unit in which saves, loads and initialisation move a
/// tensor-, pipeline- or ZeRO-split model to and from whole-tensor files (Megatron-Core's
/// ShardedTensor, flattened), so no rank ever holds more than its own part.

#include <algorithm>
#include <cstddef>
#include <vector>

namespace tapestry {

/// \brief Elements [local, local + n) of a rank's buffer are elements [whole, whole + n) of the
/// whole model's.
struct FlatRun {
  std::size_t whole = 0, local = 0, n = 0;
};

/// The parts of `runs` (sorted by `local`) inside local range [lo, hi), with `local` made relative
/// to `base` (the local index of element 0 of the buffer they will address).
inline std::vector<FlatRun> clip_runs(const std::vector<FlatRun>& runs, std::size_t lo, std::size_t hi,
                                      std::size_t base = 0) {
  std::vector<FlatRun> out;
  auto it = std::upper_bound(runs.begin(), runs.end(), lo, [](std::size_t v, const FlatRun& r) { return v < r.local + r.n; });
  for (; it != runs.end() && it->local < hi; ++it) {
    const std::size_t a = std::max(lo, it->local), b = std::min(hi, it->local + it->n);
    if (a < b) out.push_back({it->whole + (a - it->local), a - base, b - a});
  }
  return out;
}

/// The identity runs of a whole-model buffer: [lo, hi) in both.
inline std::vector<FlatRun> identity_runs(std::size_t lo, std::size_t hi, std::size_t base = 0) {
  if (lo >= hi) return {};
  return {FlatRun{lo, lo - base, hi - lo}};
}

}  // namespace tapestry
