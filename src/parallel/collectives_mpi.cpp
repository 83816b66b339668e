#include <climits>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
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

  // Started collectives: a queue served in order by one thread of this object, which alone uses
  // comm_ meanwhile. The buffers are host memory here, so the thread makes no Kokkos call.
  void start_all_reduce_sum(float* buf, std::size_t n) override {
    if (!background_) return all_reduce_sum(buf, n);
    ex_.fence();  // the work issued before has written buf
    enqueue([this, buf, n] { parallel::all_reduce_sum(buf, n, MPI_FLOAT, sizeof(float), comm_); });
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
    enqueue([this, send, recv, n, root] { parallel::reduce_sum(send, recv, n, MPI_FLOAT, sizeof(float), root, comm_); });
  }
  void wait_started() override {
    std::unique_lock<std::mutex> lock(mu_);
    idle_.wait(lock, [this] { return queue_.empty() && !busy_; });
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
  }
  const char* started_on() const override { return background_ ? "a thread" : "blocking"; }

 private:
  void enqueue(std::function<void()> task) {
    {
      const std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(task));
    }
    if (!worker_.joinable()) worker_ = std::thread([this] { serve(); });
    work_.notify_one();
  }
  void serve() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      work_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopped with nothing left
      auto task = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
      lock.unlock();
      try {
        if (!error_) task();  // after a failure the rest is dropped: wait_started() raises it
      } catch (...) {
        error_ = std::current_exception();
      }
      lock.lock();
      busy_ = false;
      if (queue_.empty()) idle_.notify_all();
    }
  }

  MPI_Comm comm_;
  int rank_, size_;
  ExecSpace ex_;
  bool background_;
  std::thread worker_;
  std::mutex mu_;
  std::condition_variable work_, idle_;
  std::deque<std::function<void()>> queue_;
  bool busy_ = false, stop_ = false;
  std::exception_ptr error_;
};

}  // namespace

std::unique_ptr<Collectives> make_mpi_collectives(const Comm& comm) {
  return std::make_unique<MpiCollectives>(comm);
}

}  // namespace tapestry::parallel
