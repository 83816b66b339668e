#include <algorithm>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "tapestry/core/error.hpp"
#include "tapestry/core/views.hpp"
#include "tapestry/parallel/collectives.hpp"
#include "tapestry/parallel/large_count.hpp"
#include "tapestry/parallel/mpi_buffer.hpp"

namespace tapestry::parallel {

namespace {

constexpr bool kHostMemory = Kokkos::SpaceAccessibility<Kokkos::HostSpace, MemSpace>::accessible;

bool thread_multiple() {
  int level = MPI_THREAD_SINGLE;
  MPI_Query_thread(&level);
  return level == MPI_THREAD_MULTIPLE;
}

/// MPI on buffers in the build's memory space: passed directly where MPI can read them (host
/// memory, CUDA-aware MPI), through host copies otherwise (a GPU build under a plain MPI).
class MpiCollectives final : public Collectives {
 public:
  explicit MpiCollectives(const Comm& comm)
      : comm_(comm.get()), rank_(comm.rank()), size_(comm.size()), background_(kHostMemory && thread_multiple()) {}
  ~MpiCollectives() override {
    if (!worker_.joinable()) return;
    {
      const std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    work_.notify_one();
    worker_.join();
  }
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

  // Started collectives: one thread of this object, which alone uses comm_ meanwhile, posts them
  // as non-blocking MPI calls in the order started and drives them with MPI_Testsome, sleeping
  // kPoll between tests, so many are in flight (their latencies overlap on a slow link) and the
  // thread takes little of a core the computation needs. The buffers are host memory here, so
  // the thread makes no Kokkos call.
  void start_all_reduce_sum(float* buf, std::size_t n) override {
    if (!background_) return all_reduce_sum(buf, n);
    ex_.fence();  // the work issued before has written buf
    post({buf, buf, n, -1, false});
  }
  void start_reduce_sum(const float* send, float* recv, std::size_t n, int root) override {
    if (!background_) {
      auto s = MpiBuffer::over(const_cast<float*>(send), n);
      auto r = MpiBuffer::over(rank_ == root ? recv : const_cast<float*>(send), n);
      s.copy_in(ex_);
      parallel::reduce_sum(s.data(), r.data(), n, MPI_FLOAT, sizeof(float), root, comm_);
      if (rank_ == root) r.copy_out(ex_);
      return;
    }
    ex_.fence();
    post({send, recv, n, root, false});
  }
  void start_broadcast(float* buf, std::size_t n, int root) override {
    if (!background_) return broadcast(buf, n, root);
    ex_.fence();
    post({buf, buf, n, root, true});
  }
  std::size_t started_mark() override { return posted_; }
  void wait_started(std::size_t mark) override {
    std::unique_lock<std::mutex> lock(mu_);
    idle_.wait(lock, [this, mark] { return done_ >= mark; });
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
  }
  void wait_started() override { wait_started(posted_); }
  const char* started_on() const override { return background_ ? "a thread" : "blocking"; }

 private:
  /// One started collective: an all-reduce in place on recv (root < 0), a reduce to root, or a
  /// broadcast of recv from root.
  struct Started {
    const float* send;
    float* recv;
    std::size_t n;
    int root;
    bool broadcast;
  };
  static constexpr std::chrono::microseconds kPoll{100};

  void post(const Started& c) {
    {
      const std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(c);
      ++posted_;
    }
    if (!worker_.joinable()) worker_ = std::thread([this] { serve(); });
    work_.notify_one();
  }
  void issue(const Started& c, std::size_t seq, std::vector<MPI_Request>& reqs, std::vector<std::size_t>& seqs) {
    for (std::size_t off = 0; off < c.n; off += kMaxCount) {
      const int k = int(std::min(kMaxCount, c.n - off));
      reqs.emplace_back();
      seqs.push_back(seq);
      if (c.broadcast) {
        MPI_Ibcast(c.recv + off, k, MPI_FLOAT, c.root, comm_, &reqs.back());
      } else if (c.root < 0) {
        MPI_Iallreduce(MPI_IN_PLACE, c.recv + off, k, MPI_FLOAT, MPI_SUM, comm_, &reqs.back());
      } else {
        MPI_Ireduce(c.send + off, rank_ == c.root ? c.recv + off : nullptr, k, MPI_FLOAT, MPI_SUM, c.root, comm_,
                    &reqs.back());
      }
    }
  }
  // done_ = the started collectives complete in order: all those posted before the first one of
  // reqs still pending (requests complete in any order; MPI_Testsome nulls the finished ones).
  void serve() {
    std::vector<MPI_Request> reqs;
    std::vector<std::size_t> seqs;  // per request: the collective it belongs to (posting order)
    std::size_t issued = 0;
    std::vector<int> idx;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      const auto more = [this] { return stop_ || !queue_.empty(); };
      if (reqs.empty()) work_.wait(lock, more);
      else work_.wait_for(lock, kPoll, more);
      // Destroyed: after finish() nothing is in flight. With sums still in flight the step failed
      // on this rank (an exception unwinding); they are left behind rather than waited for, since
      // the other ranks may never join them, and the job ends (main() aborts it).
      if (stop_) return;
      std::deque<Started> now;
      now.swap(queue_);
      const bool failed = error_ != nullptr;
      std::exception_ptr error;
      lock.unlock();
      try {
        if (!failed) {  // after a failure the rest is dropped: wait_started() raises it
          for (const auto& c : now) issue(c, issued++, reqs, seqs);
          if (!reqs.empty()) {
            int count = 0;
            idx.resize(reqs.size());
            MPI_Testsome(int(reqs.size()), reqs.data(), &count, idx.data(), MPI_STATUSES_IGNORE);
            std::size_t k = 0;
            while (k < reqs.size() && reqs[k] == MPI_REQUEST_NULL) ++k;
            reqs.erase(reqs.begin(), reqs.begin() + std::ptrdiff_t(k));
            seqs.erase(seqs.begin(), seqs.begin() + std::ptrdiff_t(k));
          }
        } else {
          issued += now.size();
        }
      } catch (...) {
        error = std::current_exception();
      }
      lock.lock();
      if (error) {  // what was in flight is abandoned; every collective posted so far counts as ended
        error_ = error;
        reqs.clear(), seqs.clear(), queue_.clear();
        issued = posted_;
      }
      done_ = seqs.empty() ? issued : seqs.front();
      idle_.notify_all();
    }
  }

  MPI_Comm comm_;
  int rank_, size_;
  ExecSpace ex_;
  bool background_;
  std::thread worker_;
  std::mutex mu_;
  std::condition_variable work_, idle_;
  std::deque<Started> queue_;  ///< posted, not yet issued by the thread
  std::size_t posted_ = 0;     ///< collectives started (the calling thread's count)
  std::size_t done_ = 0;       ///< of those, the first done_ are complete (the thread's count)
  bool stop_ = false;
  std::exception_ptr error_;
};

}  // namespace

std::unique_ptr<Collectives> make_mpi_collectives(const Comm& comm) {
  return std::make_unique<MpiCollectives>(comm);
}

}  // namespace tapestry::parallel
