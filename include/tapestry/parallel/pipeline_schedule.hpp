#pragma once
/// \file
/// \brief The 1F1B pipeline schedule as pure data (no MPI): which micro-batch each stage runs
/// forward or backward, in order. Unit-tested for every stage and micro-batch count.

#include <string>
#include <vector>

namespace tapestry::parallel {

/// \brief One step of a stage's schedule.
struct PipeOp {
  enum Kind { forward, backward } kind;
  int micro;  ///< micro-batch, 0 .. M-1
  bool operator==(const PipeOp& o) const { return kind == o.kind && micro == o.micro; }
};

/// 1F1B (PipeDream-flush, as Megatron runs it) for `stage` of `stages` with `micro_batches`
/// micro-batches: min(stages - stage - 1, M) warm-up forwards, then one forward and one backward
/// in turn, then the remaining backwards. Every micro-batch is forwarded and backwarded once.
std::vector<PipeOp> one_f_one_b(int stages, int stage, int micro_batches);

/// The schedule's idle share when every forward and backward takes the same time per stage:
/// (stages - 1) / (M + stages - 1).
double bubble_fraction(int stages, int micro_batches);

/// Plays the schedules of all stages against each other: a forward of micro m at stage s > 0
/// needs stage s-1's forward of m, a backward at s < stages-1 needs stage s+1's backward of m.
/// Returns "" when every stage finishes, else a description of the deadlock.
std::string simulate(const std::vector<std::vector<PipeOp>>& schedules);

}  // namespace tapestry::parallel
