#include "tapestry/parallel/pipeline_schedule.hpp"

#include <algorithm>
#include <set>
#include <utility>

namespace tapestry::parallel {

std::vector<PipeOp> one_f_one_b(int stages, int stage, int micro_batches) {
  const int M = micro_batches, warmup = std::min(stages - stage - 1, M);
  std::vector<PipeOp> ops;
  for (int m = 0; m < warmup; ++m) ops.push_back({PipeOp::forward, m});
  for (int i = 0; i < M - warmup; ++i) {
    ops.push_back({PipeOp::forward, warmup + i});
    ops.push_back({PipeOp::backward, i});
  }
  for (int m = M - warmup; m < M; ++m) ops.push_back({PipeOp::backward, m});
  return ops;
}

double bubble_fraction(int stages, int micro_batches) {
  return double(stages - 1) / double(micro_batches + stages - 1);
}

std::string simulate(const std::vector<std::vector<PipeOp>>& schedules) {
  const int S = int(schedules.size());
  std::set<std::pair<int, int>> fdone, bdone;  // (stage, micro)
  std::vector<std::size_t> next(std::size_t(S), 0);
  for (bool progress = true; progress;) {
    progress = false;
    for (int s = 0; s < S; ++s) {
      auto& i = next[std::size_t(s)];
      while (i < schedules[std::size_t(s)].size()) {
        const PipeOp op = schedules[std::size_t(s)][i];
        const bool ready = op.kind == PipeOp::forward
                               ? (s == 0 || fdone.count({s - 1, op.micro}))
                               : (s == S - 1 ? fdone.count({s, op.micro}) > 0 : bdone.count({s + 1, op.micro}) > 0);
        if (!ready) break;
        (op.kind == PipeOp::forward ? fdone : bdone).insert({s, op.micro});
        ++i, progress = true;
      }
    }
  }
  for (int s = 0; s < S; ++s)
    if (next[std::size_t(s)] < schedules[std::size_t(s)].size()) {
      const PipeOp op = schedules[std::size_t(s)][next[std::size_t(s)]];
      return "stage " + std::to_string(s) + " waits forever at its " +
             (op.kind == PipeOp::forward ? "forward" : "backward") + " of micro-batch " + std::to_string(op.micro);
    }
  return "";
}

}  // namespace tapestry::parallel
