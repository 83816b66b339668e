#include "pipeline.hpp"

#include <stdexcept>
#include <string>

#include "tapestry/core/error.hpp"
#include "tapestry/parallel/large_count.hpp"
#include "tapestry/parallel/pipeline_schedule.hpp"
#include "text.hpp"

namespace tapestry::train::detail {

Pipeline::Pipeline(model::GPT& gpt, const parallel::Comm& pp, int micro_batches)
    : gpt_(gpt), pp_(pp), stage_(pp.rank()), stages_(pp.size()), M_(micro_batches) {
  const std::size_t n = gpt.stage_input().size();  // any count: parallel::isend/irecv send chunks
  for (int m = 0; m < M_; ++m) {
    if (stage_ > 0) {
      inputs_.emplace_back("tapestry::pipe_input", n);
      send_grad_.emplace_back("tapestry::pipe_send_grad", n);
    }
    if (stage_ < stages_ - 1) send_act_.emplace_back("tapestry::pipe_send_act", n);
  }
  if (stage_ < stages_ - 1) recv_grad_ = parallel::MpiBuffer("tapestry::pipe_recv_grad", gpt.output_grad().size());
}

void Pipeline::wait(std::vector<MPI_Request>& reqs) {
  const auto t0 = Clock::now();
  MPI_Waitall(int(reqs.size()), reqs.data(), MPI_STATUSES_IGNORE);
  reqs.clear();
  idle_s_ += since(t0);
}

double Pipeline::train_step(const kernels::Blas& blas, const std::vector<std::vector<int>>& ins,
                            const std::vector<std::vector<int>>& tgs, const std::function<void()>& before_last_backward) {
  idle_s_ = 0;
  const auto& ex = blas.exec();
  const MPI_Comm comm = pp_.get();
  std::vector<MPI_Request> sends;
  // Receives posted ahead, so a neighbour's message can land while this stage computes: every
  // micro-batch's input at once (each has its buffer), and the next output gradient as soon as
  // the one buffer for it is free (1F1B runs the backwards in micro-batch order).
  std::vector<std::vector<MPI_Request>> inputs(std::size_t(stage_ > 0 ? M_ : 0));
  for (int m = 0; m < int(inputs.size()); ++m) {
    auto& buf = inputs_[std::size_t(m)];
    parallel::irecv(buf.data(), buf.size(), MPI_FLOAT, sizeof(float), stage_ - 1, 2 * m, comm, inputs[std::size_t(m)]);
  }
  std::vector<MPI_Request> grad;
  int next_grad = 0;  // the micro-batch whose output gradient is (to be) posted
  auto post_grad = [&] {
    if (stage_ < stages_ - 1 && next_grad < M_)
      parallel::irecv(recv_grad_.data(), recv_grad_.size(), MPI_FLOAT, sizeof(float), stage_ + 1, 2 * next_grad + 1,
                      comm, grad);
  };
  post_grad();
  double loss = 0;
  int forwarded = -1;  // the micro-batch whose activations the model holds
  // The first forward of a micro-batch runs the output layer's backward too (the last stage, whose
  // backward follows at once); a recomputation does not (backward() then recomputes the logits).
  auto forward = [&](int m, bool first) {
    if (stage_ > 0) inputs_[std::size_t(m)].copy_to(ex, gpt_.stage_input().data());
    const double l = gpt_.forward(blas, ins[std::size_t(m)], tgs[std::size_t(m)],
                                  first ? std::optional<double>(1.0 / M_) : std::nullopt);
    forwarded = m;
    return l;
  };
  for (const auto& op : parallel::one_f_one_b(stages_, stage_, M_)) {
    const int m = op.micro;
    if (op.kind == parallel::PipeOp::forward) {
      if (stage_ > 0) wait(inputs[std::size_t(m)]);  // this micro-batch's input, from the previous stage
      loss += forward(m, true) / M_;
      if (stage_ < stages_ - 1) {
        auto& buf = send_act_[std::size_t(m)];
        buf.copy_from(ex, gpt_.stage_output().data());
        parallel::isend(buf.data(), buf.size(), MPI_FLOAT, sizeof(float), stage_ + 1, 2 * m, comm, sends);
      }
    } else {
      if (forwarded != m) forward(m, false);  // recompute this micro-batch's activations
      if (stage_ < stages_ - 1) {  // d loss / d output, from the next stage
        if (m != next_grad)
          throw std::logic_error("pipeline: backward of micro-batch " + std::to_string(m) + " before " +
                                 std::to_string(next_grad));
        wait(grad);
        recv_grad_.copy_to(ex, gpt_.output_grad().data());
        ++next_grad;
        post_grad();
      }
      if (m == M_ - 1 && before_last_backward) before_last_backward();  // 1F1B: backward in micro-batch order
      gpt_.backward(blas, 1.0 / M_);
      if (stage_ > 0) {
        auto& buf = send_grad_[std::size_t(m)];
        buf.copy_from(ex, gpt_.input_grad().data());
        parallel::isend(buf.data(), buf.size(), MPI_FLOAT, sizeof(float), stage_ - 1, 2 * m + 1, comm, sends);
      }
    }
  }
  wait(sends);
  MPI_Allreduce(MPI_IN_PLACE, &loss, 1, MPI_DOUBLE, MPI_SUM, comm);  // the last stage's loss, everywhere
  return loss;
}

double Pipeline::forward_only(const kernels::Blas& blas, const std::vector<int>& in, const std::vector<int>& tg) {
  const auto& ex = blas.exec();
  const MPI_Comm comm = pp_.get();
  if (stage_ > 0) {
    auto x = parallel::MpiBuffer::over(gpt_.stage_input().data(), gpt_.stage_input().size());
    parallel::recv(x.data(), x.size(), MPI_FLOAT, sizeof(float), stage_ - 1, 0, comm);
    x.copy_out(ex);
  }
  double loss = gpt_.forward(blas, in, tg);
  if (stage_ < stages_ - 1) {
    auto y = parallel::MpiBuffer::over(gpt_.stage_output().data(), gpt_.stage_output().size());
    y.copy_in(ex);
    parallel::send(y.data(), y.size(), MPI_FLOAT, sizeof(float), stage_ + 1, 0, comm);
  }
  MPI_Allreduce(MPI_IN_PLACE, &loss, 1, MPI_DOUBLE, MPI_SUM, comm);
  return loss;
}

}  // namespace tapestry::train::detail
