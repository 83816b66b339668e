// NCCL collectives: built whenever CUDA and NCCL are found, run where Kokkos runs on CUDA.
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <string>
#include <vector>

#include "tapestry/core/error.hpp"
#include "tapestry/core/views.hpp"
#include "tapestry/parallel/collectives.hpp"

namespace tapestry::parallel {

namespace {

void check(ncclResult_t r, const char* what) {
  if (r != ncclSuccess) throw LibraryError(std::string("NCCL ") + what + ": " + ncclGetErrorString(r));
}
void check(cudaError_t r, const char* what) {
  if (r != cudaSuccess) throw LibraryError(std::string("CUDA ") + what + ": " + cudaGetErrorString(r));
}

/// The stream Tapestry's kernels run on: Kokkos' (the legacy default stream in a build whose
/// Kokkos does not run on CUDA, where NCCL is never used).
cudaStream_t compute_stream() {
#ifdef KOKKOS_ENABLE_CUDA
  return ExecSpace().cuda_stream();
#else
  return nullptr;
#endif
}

class NcclCollectives final : public Collectives {
 public:
  explicit NcclCollectives(const Comm& comm) : rank_(comm.rank()), size_(comm.size()) {
    ncclUniqueId id;
    if (rank_ == 0) check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, comm.get());
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    check(ncclCommInitRank(&comm_, size_, id, rank_), "ncclCommInitRank");
    check(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming), "cudaEventCreate");
    check(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming), "cudaEventCreate");
  }
  ~NcclCollectives() override {
    for (auto e : marks_) cudaEventDestroy(e);
    if (ready_) cudaEventDestroy(ready_);
    if (done_) cudaEventDestroy(done_);
    if (comm_) ncclCommDestroy(comm_);
    if (stream_) cudaStreamDestroy(stream_);
  }
  const char* name() const override { return "nccl"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  // Tapestry's kernels run on the default stream; NCCL runs on its own, so each call first waits
  // for all prior device work and returns when the collective is done.
  void all_reduce_sum(float* buf, std::size_t n) override {
    sync_in();
    check(ncclAllReduce(buf, buf, n, ncclFloat32, ncclSum, comm_, stream_), "ncclAllReduce");
    sync_out();
  }
  void reduce_scatter_sum(const float* send, float* recv, std::size_t n) override {
    sync_in();
    check(ncclReduceScatter(send, recv, n, ncclFloat32, ncclSum, comm_, stream_), "ncclReduceScatter");
    sync_out();
  }
  void all_gather_inplace(float* buf, std::size_t n) override {
    sync_in();
    check(ncclAllGather(buf + std::size_t(rank_) * n, buf, n, ncclFloat32, comm_, stream_), "ncclAllGather");
    sync_out();
  }
  void broadcast(float* buf, std::size_t n, int root) override {
    sync_in();
    check(ncclBroadcast(buf, buf, n, ncclFloat32, root, comm_, stream_), "ncclBroadcast");
    sync_out();
  }
  void send(const float* buf, std::size_t n, int peer) override {
    sync_in();
    check(ncclSend(buf, n, ncclFloat32, peer, comm_, stream_), "ncclSend");
    sync_out();
  }
  void recv(float* buf, std::size_t n, int peer) override {
    sync_in();
    check(ncclRecv(buf, n, ncclFloat32, peer, comm_, stream_), "ncclRecv");
    sync_out();
  }

  // Started: the communication stream waits for an event on Kokkos' stream (the work issued
  // before), and wait_started() makes Kokkos' stream wait for the communication stream. The host
  // never blocks here.
  void start_all_reduce_sum(float* buf, std::size_t n) override {
    after_compute();
    check(ncclAllReduce(buf, buf, n, ncclFloat32, ncclSum, comm_, stream_), "ncclAllReduce");
  }
  void start_reduce_sum(const float* send, float* recv, std::size_t n, int root) override {
    after_compute();
    check(ncclReduce(send, rank_ == root ? recv : nullptr, n, ncclFloat32, ncclSum, root, comm_, stream_), "ncclReduce");
  }
  void start_broadcast(float* buf, std::size_t n, int root) override {
    after_compute();
    check(ncclBroadcast(buf, buf, n, ncclFloat32, root, comm_, stream_), "ncclBroadcast");
  }
  std::size_t started_mark() override {
    if (marks_used_ == marks_.size()) {
      marks_.emplace_back();
      check(cudaEventCreateWithFlags(&marks_.back(), cudaEventDisableTiming), "cudaEventCreate");
    }
    check(cudaEventRecord(marks_[marks_used_], stream_), "cudaEventRecord");
    return marks_used_++;
  }
  void wait_started(std::size_t mark) override {
    require(mark < marks_used_, "NcclCollectives::wait_started: no such mark");
    check(cudaStreamWaitEvent(compute_stream(), marks_[mark], 0), "cudaStreamWaitEvent");
  }
  void wait_started() override {
    check(cudaEventRecord(done_, stream_), "cudaEventRecord");
    check(cudaStreamWaitEvent(compute_stream(), done_, 0), "cudaStreamWaitEvent");
    marks_used_ = 0;
  }
  const char* started_on() const override { return "the communication stream"; }

 private:
  void sync_in() { check(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }
  void sync_out() { check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }
  void after_compute() {
    check(cudaEventRecord(ready_, compute_stream()), "cudaEventRecord");
    check(cudaStreamWaitEvent(stream_, ready_, 0), "cudaStreamWaitEvent");
  }

  int rank_, size_;
  cudaStream_t stream_ = nullptr;
  ncclComm_t comm_ = nullptr;
  cudaEvent_t ready_ = nullptr, done_ = nullptr;
  std::vector<cudaEvent_t> marks_;  ///< started_mark()'s events, reused after each wait_started()
  std::size_t marks_used_ = 0;
};

}  // namespace

std::unique_ptr<Collectives> make_nccl_collectives(const Comm& comm) {
  return std::make_unique<NcclCollectives>(comm);
}

std::string nccl_version() {
  int v = 0;
  check(ncclGetVersion(&v), "ncclGetVersion");
  // NCCL >= 2.9 encodes major*10000 + minor*100 + patch.
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

}  // namespace tapestry::parallel
