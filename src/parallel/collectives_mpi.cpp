#include <climits>

#include "tapestry/core/error.hpp"
#include "tapestry/core/views.hpp"
#include "tapestry/parallel/collectives.hpp"

namespace tapestry::parallel {

namespace {

/// MPI counts are int: large tensors go in chunks.
constexpr std::size_t kMaxChunk = std::size_t(1) << 30;

/// MPI on buffers MPI can read: host memory, or device memory with a CUDA-aware MPI.
class MpiCollectives final : public Collectives {
 public:
  explicit MpiCollectives(const Comm& comm) : comm_(comm.get()), rank_(comm.rank()), size_(comm.size()) {}
  const char* name() const override { return "mpi"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void all_reduce_sum(float* buf, std::size_t n) override {
    ExecSpace().fence();
    for (std::size_t off = 0; off < n; off += kMaxChunk)
      MPI_Allreduce(MPI_IN_PLACE, buf + off, int(std::min(kMaxChunk, n - off)), MPI_FLOAT, MPI_SUM, comm_);
  }
  void reduce_scatter_sum(const float* send, float* recv, std::size_t n) override {
    require(n <= kMaxChunk, "reduce_scatter: shard too large for one MPI call");
    ExecSpace().fence();
    MPI_Reduce_scatter_block(send, recv, int(n), MPI_FLOAT, MPI_SUM, comm_);
  }
  void all_gather_inplace(float* buf, std::size_t n) override {
    require(n <= kMaxChunk, "all_gather: shard too large for one MPI call");
    ExecSpace().fence();
    MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, int(n), MPI_FLOAT, comm_);
  }
  void broadcast(float* buf, std::size_t n, int root) override {
    ExecSpace().fence();
    for (std::size_t off = 0; off < n; off += kMaxChunk)
      MPI_Bcast(buf + off, int(std::min(kMaxChunk, n - off)), MPI_FLOAT, root, comm_);
  }
  void send(const float* buf, std::size_t n, int peer) override {
    ExecSpace().fence();
    for (std::size_t off = 0; off < n; off += kMaxChunk)
      MPI_Send(buf + off, int(std::min(kMaxChunk, n - off)), MPI_FLOAT, peer, 0, comm_);
  }
  void recv(float* buf, std::size_t n, int peer) override {
    for (std::size_t off = 0; off < n; off += kMaxChunk)
      MPI_Recv(buf + off, int(std::min(kMaxChunk, n - off)), MPI_FLOAT, peer, 0, comm_, MPI_STATUS_IGNORE);
  }

 private:
  MPI_Comm comm_;
  int rank_, size_;
};

}  // namespace

std::unique_ptr<Collectives> make_mpi_collectives(const Comm& comm) {
  return std::make_unique<MpiCollectives>(comm);
}

}  // namespace tapestry::parallel
