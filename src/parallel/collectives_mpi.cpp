#include <climits>
#include <vector>
#include <mpi.h>
#if __has_include(<mpi-ext.h>)
#include <mpi-ext.h>  // Open MPI: MPIX_Query_cuda_support
#endif

#include "tapestry/core/error.hpp"
#include "tapestry/core/views.hpp"
#include "tapestry/parallel/collectives.hpp"

namespace tapestry::parallel {

namespace {

/// MPI counts are int: large tensors go in chunks.
constexpr std::size_t kMaxChunk = std::size_t(1) << 30;

/// Whether MPI can read this build's device buffers: always for host memory spaces; on GPUs only
/// with a CUDA-aware MPI (asked at run time where the MPI can answer, else assumed not).
bool mpi_reads_device_memory() {
  if constexpr (Kokkos::SpaceAccessibility<Kokkos::HostSpace, MemSpace>::accessible) return true;
#if defined(MPIX_CUDA_AWARE_SUPPORT) && MPIX_CUDA_AWARE_SUPPORT
  return MPIX_Query_cuda_support() == 1;
#else
  return false;
#endif
}

/// A device buffer's host copy for an MPI call that cannot read device memory: copies in on
/// construction (when `in`), out by `done()` (when `out`). A no-op wrapper where MPI reads it.
class Staged {
 public:
  Staged(const float* buf, std::size_t n, bool direct, bool in)
      : dev_(const_cast<float*>(buf)), n_(n), direct_(direct) {
    if (direct_) return;
    host_.resize(n);
    if (in) Kokkos::deep_copy(host_view(), device_view());
  }
  float* data() { return direct_ ? dev_ : host_.data(); }
  void done() {
    if (!direct_) Kokkos::deep_copy(device_view(), host_view());
  }

 private:
  using Unmanaged = Kokkos::MemoryTraits<Kokkos::Unmanaged>;
  using HostView = Kokkos::View<float*, tapestry::Layout, HostSpace, Unmanaged>;
  using DeviceView = Kokkos::View<float*, tapestry::Layout, MemSpace, Unmanaged>;
  HostView host_view() { return HostView(host_.data(), n_); }
  DeviceView device_view() { return DeviceView(dev_, n_); }
  float* dev_;
  std::size_t n_;
  bool direct_;
  std::vector<float> host_;
};

/// MPI on buffers in the build's memory space: passed directly where MPI can read them (host
/// memory, CUDA-aware MPI), through host copies otherwise (a GPU build under a plain MPI).
class MpiCollectives final : public Collectives {
 public:
  explicit MpiCollectives(const Comm& comm)
      : comm_(comm.get()), rank_(comm.rank()), size_(comm.size()), direct_(mpi_reads_device_memory()) {}
  const char* name() const override { return "mpi"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void all_reduce_sum(float* buf, std::size_t n) override {
    ExecSpace().fence();
    Staged b(buf, n, direct_, true);
    for (std::size_t off = 0; off < n; off += kMaxChunk)
      MPI_Allreduce(MPI_IN_PLACE, b.data() + off, int(std::min(kMaxChunk, n - off)), MPI_FLOAT, MPI_SUM, comm_);
    b.done();
  }
  void reduce_scatter_sum(const float* send, float* recv, std::size_t n) override {
    require(n <= kMaxChunk, "reduce_scatter: shard too large for one MPI call");
    ExecSpace().fence();
    Staged s(send, n * std::size_t(size_), direct_, true), r(recv, n, direct_, false);
    MPI_Reduce_scatter_block(s.data(), r.data(), int(n), MPI_FLOAT, MPI_SUM, comm_);
    r.done();
  }
  void all_gather_inplace(float* buf, std::size_t n) override {
    require(n <= kMaxChunk, "all_gather: shard too large for one MPI call");
    ExecSpace().fence();
    Staged b(buf, n * std::size_t(size_), direct_, true);
    MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, b.data(), int(n), MPI_FLOAT, comm_);
    b.done();
  }
  void broadcast(float* buf, std::size_t n, int root) override {
    ExecSpace().fence();
    Staged b(buf, n, direct_, rank_ == root);
    for (std::size_t off = 0; off < n; off += kMaxChunk)
      MPI_Bcast(b.data() + off, int(std::min(kMaxChunk, n - off)), MPI_FLOAT, root, comm_);
    b.done();
  }
  void send(const float* buf, std::size_t n, int peer) override {
    ExecSpace().fence();
    Staged b(buf, n, direct_, true);
    for (std::size_t off = 0; off < n; off += kMaxChunk)
      MPI_Send(b.data() + off, int(std::min(kMaxChunk, n - off)), MPI_FLOAT, peer, 0, comm_);
  }
  void recv(float* buf, std::size_t n, int peer) override {
    Staged b(buf, n, direct_, false);
    for (std::size_t off = 0; off < n; off += kMaxChunk)
      MPI_Recv(b.data() + off, int(std::min(kMaxChunk, n - off)), MPI_FLOAT, peer, 0, comm_, MPI_STATUS_IGNORE);
    b.done();
  }

 private:
  MPI_Comm comm_;
  int rank_, size_;
  bool direct_;  // MPI reads the buffers where they are
};

}  // namespace

std::unique_ptr<Collectives> make_mpi_collectives(const Comm& comm) {
  return std::make_unique<MpiCollectives>(comm);
}

}  // namespace tapestry::parallel
