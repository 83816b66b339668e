#pragma once
// Runs a pipeline stage's 1F1B schedule (parallel::one_f_one_b) for one optimizer step: forwards
// and backwards of the micro-batches, with the activations and their gradients passed between
// neighbouring stages by non-blocking MPI point-to-point messages. Private to the train layer.
#include <mpi.h>

#include <functional>
#include <vector>

#include "tapestry/kernels/blas.hpp"
#include "tapestry/model/gpt.hpp"
#include "tapestry/parallel/comm.hpp"
#include "tapestry/parallel/mpi_buffer.hpp"

namespace tapestry::train::detail {

class Pipeline {
 public:
  /// `pp`: the stages of this rank's pipeline (rank = stage); `gpt` is this stage's part.
  Pipeline(model::GPT& gpt, const parallel::Comm& pp, int micro_batches);

  /// Forward and backward of every micro-batch (ins[m], tgs[m]), gradients of the mean loss
  /// accumulated into gpt.grads(). Returns the mean loss on every stage.
  ///
  /// A stage keeps only its micro-batches' inputs, not their activations: before a backward it
  /// runs that micro-batch's forward again unless it was the last one (full activation
  /// recomputation: one more forward on all but the last stage, activations of one micro-batch).
  /// `before_last_backward` (if any) runs just before this stage's last backward of the step (after
  /// it, no gradient changes; --overlap-grad-reduce sets the model's layer_done hook there).
  double train_step(const kernels::Blas& blas, const std::vector<std::vector<int>>& ins,
                    const std::vector<std::vector<int>>& tgs, const std::function<void()>& before_last_backward = {});
  /// Forward only (validation), one micro-batch through all stages; the loss on every stage.
  double forward_only(const kernels::Blas& blas, const std::vector<int>& in, const std::vector<int>& tg);
  /// Seconds this stage waited for its neighbours during the last train_step.
  double idle_seconds() const { return idle_s_; }

 private:
  model::GPT& gpt_;
  const parallel::Comm& pp_;
  int stage_, stages_, M_;
  // Message buffers MPI can read (host copies on GPUs under a plain MPI): per micro-batch, and
  // one for the gradient of the stage output (received and used at once).
  std::vector<parallel::MpiBuffer> inputs_, send_act_, send_grad_;
  parallel::MpiBuffer recv_grad_;
  double idle_s_ = 0;
  void wait(std::vector<MPI_Request>& reqs);  // all of them, counting the time as idle; then cleared
};

}  // namespace tapestry::train::detail
