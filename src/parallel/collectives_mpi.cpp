#include <climits>
#include <vector>

#include "tapestry/core/error.hpp"
#include "tapestry/core/views.hpp"
#include "tapestry/parallel/collectives.hpp"
#include "tapestry/parallel/large_count.hpp"
#include "tapestry/parallel/mpi_buffer.hpp"

namespace tapestry::parallel {

namespace {

/// MPI on buffers in the build's memory space: passed directly where MPI can read them (host
/// memory, CUDA-aware MPI), through host copies otherwise (a GPU build under a plain MPI).
class MpiCollectives final : public Collectives {
 public:
  explicit MpiCollectives(const Comm& comm)
      : comm_(comm.get()), rank_(comm.rank()), size_(comm.size()) {}
  const char* name() const override { return "mpi"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void all_reduce_sum(float* buf, std::size_t n) override {
    auto b = MpiBuffer::over(buf, n);
    b.copy_in(ex_);
    parallel::all_reduce_sum(b.data(), n, MPI_FLOAT, sizeof(float), comm_);
    b.copy_out(ex_);
  }
  void reduce_scatter_sum(const float* send, float* recv, std::size_t n) override {
    auto s = MpiBuffer::over(const_cast<float*>(send), n * std::size_t(size_));
    auto r = MpiBuffer::over(recv, n);
    s.copy_in(ex_);
    parallel::reduce_scatter_sum(s.data(), r.data(), n, MPI_FLOAT, sizeof(float), comm_);
    r.copy_out(ex_);
  }
  void all_gather_inplace(float* buf, std::size_t n) override {
    auto b = MpiBuffer::over(buf, n * std::size_t(size_));
    b.copy_in(ex_);
    parallel::all_gather_inplace(b.data(), n, MPI_FLOAT, sizeof(float), comm_);
    b.copy_out(ex_);
  }
  void broadcast(float* buf, std::size_t n, int root) override {
    auto b = MpiBuffer::over(buf, n);
    if (rank_ == root) b.copy_in(ex_);  // only the root's data travels
    else ex_.fence();
    parallel::broadcast(b.data(), n, MPI_FLOAT, sizeof(float), root, comm_);
    if (rank_ != root) b.copy_out(ex_);
  }
  void send(const float* buf, std::size_t n, int peer) override {
    auto b = MpiBuffer::over(const_cast<float*>(buf), n);
    b.copy_in(ex_);
    parallel::send(b.data(), n, MPI_FLOAT, sizeof(float), peer, 0, comm_);
  }
  void recv(float* buf, std::size_t n, int peer) override {
    auto b = MpiBuffer::over(buf, n);
    parallel::recv(b.data(), n, MPI_FLOAT, sizeof(float), peer, 0, comm_);
    b.copy_out(ex_);
  }

 private:
  MPI_Comm comm_;
  int rank_, size_;
  ExecSpace ex_;
};

}  // namespace

std::unique_ptr<Collectives> make_mpi_collectives(const Comm& comm) {
  return std::make_unique<MpiCollectives>(comm);
}

}  // namespace tapestry::parallel
