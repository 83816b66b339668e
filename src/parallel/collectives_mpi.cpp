#include <climits>
#include <vector>

#include "tapestry/core/error.hpp"
#include "tapestry/core/views.hpp"
#include "tapestry/parallel/collectives.hpp"
#include "tapestry/parallel/mpi_buffer.hpp"

namespace tapestry::parallel {

namespace {

/// MPI counts are int: large tensors go in chunks.
constexpr std::size_t kMaxChunk = std::size_t(1) << 30;

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
    for (std::size_t off = 0; off < n; off += kMaxChunk)
      MPI_Allreduce(MPI_IN_PLACE, b.data() + off, int(std::min(kMaxChunk, n - off)), MPI_FLOAT, MPI_SUM, comm_);
    b.copy_out(ex_);
  }
  void reduce_scatter_sum(const float* send, float* recv, std::size_t n) override {
    require(n <= kMaxChunk, "reduce_scatter: shard too large for one MPI call");
    auto s = MpiBuffer::over(const_cast<float*>(send), n * std::size_t(size_));
    auto r = MpiBuffer::over(recv, n);
    s.copy_in(ex_);
    MPI_Reduce_scatter_block(s.data(), r.data(), int(n), MPI_FLOAT, MPI_SUM, comm_);
    r.copy_out(ex_);
  }
  void all_gather_inplace(float* buf, std::size_t n) override {
    require(n <= kMaxChunk, "all_gather: shard too large for one MPI call");
    auto b = MpiBuffer::over(buf, n * std::size_t(size_));
    b.copy_in(ex_);
    MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, b.data(), int(n), MPI_FLOAT, comm_);
    b.copy_out(ex_);
  }
  void broadcast(float* buf, std::size_t n, int root) override {
    auto b = MpiBuffer::over(buf, n);
    if (rank_ == root) b.copy_in(ex_);  // only the root's data travels
    else ex_.fence();
    for (std::size_t off = 0; off < n; off += kMaxChunk)
      MPI_Bcast(b.data() + off, int(std::min(kMaxChunk, n - off)), MPI_FLOAT, root, comm_);
    if (rank_ != root) b.copy_out(ex_);
  }
  void send(const float* buf, std::size_t n, int peer) override {
    auto b = MpiBuffer::over(const_cast<float*>(buf), n);
    b.copy_in(ex_);
    for (std::size_t off = 0; off < n; off += kMaxChunk)
      MPI_Send(b.data() + off, int(std::min(kMaxChunk, n - off)), MPI_FLOAT, peer, 0, comm_);
  }
  void recv(float* buf, std::size_t n, int peer) override {
    auto b = MpiBuffer::over(buf, n);
    for (std::size_t off = 0; off < n; off += kMaxChunk)
      MPI_Recv(b.data() + off, int(std::min(kMaxChunk, n - off)), MPI_FLOAT, peer, 0, comm_, MPI_STATUS_IGNORE);
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
