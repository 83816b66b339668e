#include "pipeline.hpp"

#include "tapestry/parallel/pipeline_schedule.hpp"
#include "text.hpp"

namespace tapestry::train::detail {

Pipeline::Pipeline(model::GPT& gpt, const parallel::Comm& pp, int micro_batches)
    : gpt_(gpt), pp_(pp), stage_(pp.rank()), stages_(pp.size()), M_(micro_batches) {
  const auto rows = gpt.stage_input().extent(0), C = gpt.stage_input().extent(1);
  for (int m = 0; m < M_; ++m) {
    if (stage_ > 0) {
      inputs_.emplace_back("tapestry::pipe_input", rows, C);
      send_grad_.emplace_back("tapestry::pipe_send_grad", rows, C);
    }
    if (stage_ < stages_ - 1) send_act_.emplace_back("tapestry::pipe_send_act", rows, C);
  }
}

void Pipeline::wait(MPI_Request& req) {
  const auto t0 = Clock::now();
  MPI_Wait(&req, MPI_STATUS_IGNORE);
  idle_s_ += since(t0);
}

double Pipeline::train_step(const kernels::Blas& blas, const std::vector<std::vector<int>>& ins,
                            const std::vector<std::vector<int>>& tgs) {
  idle_s_ = 0;
  const auto& ex = blas.exec();
  const MPI_Comm comm = pp_.get();
  std::vector<MPI_Request> sends;
  double loss = 0;
  int forwarded = -1;  // the micro-batch whose activations the model holds
  auto forward = [&](int m) {
    if (stage_ > 0) Kokkos::deep_copy(ex, gpt_.stage_input(), inputs_[std::size_t(m)]);
    const double l = gpt_.forward(blas, ins[std::size_t(m)], tgs[std::size_t(m)]);
    forwarded = m;
    return l;
  };
  for (const auto& op : parallel::one_f_one_b(stages_, stage_, M_)) {
    const int m = op.micro;
    if (op.kind == parallel::PipeOp::forward) {
      if (stage_ > 0) {  // this micro-batch's input, from the previous stage
        auto& buf = inputs_[std::size_t(m)];
        MPI_Request req;
        MPI_Irecv(buf.data(), int(buf.size()), MPI_FLOAT, stage_ - 1, 2 * m, comm, &req);
        wait(req);
      }
      loss += forward(m) / M_;
      if (stage_ < stages_ - 1) {
        auto& buf = send_act_[std::size_t(m)];
        Kokkos::deep_copy(ex, buf, gpt_.stage_output());
        ex.fence();
        sends.emplace_back();
        MPI_Isend(buf.data(), int(buf.size()), MPI_FLOAT, stage_ + 1, 2 * m, comm, &sends.back());
      }
    } else {
      if (forwarded != m) forward(m);  // recompute this micro-batch's activations
      if (stage_ < stages_ - 1) {  // d loss / d output, from the next stage
        auto g = gpt_.output_grad();
        MPI_Request req;
        MPI_Irecv(g.data(), int(g.size()), MPI_FLOAT, stage_ + 1, 2 * m + 1, comm, &req);
        wait(req);
      }
      gpt_.backward(blas, 1.0 / M_);
      if (stage_ > 0) {
        auto& buf = send_grad_[std::size_t(m)];
        Kokkos::deep_copy(ex, buf, gpt_.input_grad());
        ex.fence();
        sends.emplace_back();
        MPI_Isend(buf.data(), int(buf.size()), MPI_FLOAT, stage_ - 1, 2 * m + 1, comm, &sends.back());
      }
    }
  }
  const auto t0 = Clock::now();
  MPI_Waitall(int(sends.size()), sends.data(), MPI_STATUSES_IGNORE);
  idle_s_ += since(t0);
  MPI_Allreduce(MPI_IN_PLACE, &loss, 1, MPI_DOUBLE, MPI_SUM, comm);  // the last stage's loss, everywhere
  return loss;
}

double Pipeline::forward_only(const kernels::Blas& blas, const std::vector<int>& in, const std::vector<int>& tg) {
  const auto& ex = blas.exec();
  const MPI_Comm comm = pp_.get();
  if (stage_ > 0) {
    auto x = gpt_.stage_input();
    MPI_Recv(x.data(), int(x.size()), MPI_FLOAT, stage_ - 1, 0, comm, MPI_STATUS_IGNORE);
  }
  double loss = gpt_.forward(blas, in, tg);
  if (stage_ < stages_ - 1) {
    ex.fence();
    auto y = gpt_.stage_output();
    MPI_Send(y.data(), int(y.size()), MPI_FLOAT, stage_ + 1, 0, comm);
  }
  MPI_Allreduce(MPI_IN_PLACE, &loss, 1, MPI_DOUBLE, MPI_SUM, comm);
  return loss;
}

}  // namespace tapestry::train::detail
