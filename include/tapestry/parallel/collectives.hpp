#pragma once
/// \file
/// \brief Tensor collectives over one communicator, on buffers in the execution space's memory.
/// An MPI implementation always; an NCCL one where the build found CUDA and NCCL.

#include <cstddef>
#include <memory>
#include <string>

#include "tapestry/parallel/comm.hpp"

namespace tapestry::parallel {

/// \brief The operations the parallel layers need. Sums only; callers scale.
/// Every call is collective over the communicator (send/recv: over the pair) and blocking.
class Collectives {
 public:
  virtual ~Collectives() = default;
  virtual const char* name() const = 0;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  /// buf (n) = sum over ranks of buf, in place.
  virtual void all_reduce_sum(float* buf, std::size_t n) = 0;
  /// recv (n) = sum over ranks of send[rank*n, (rank+1)*n); send holds size()*n.
  virtual void reduce_scatter_sum(const float* send, float* recv, std::size_t n) = 0;
  /// buf (size()*n): every rank's block [r*n, (r+1)*n) to all, in place.
  virtual void all_gather_inplace(float* buf, std::size_t n) = 0;
  virtual void broadcast(float* buf, std::size_t n, int root) = 0;
  virtual void send(const float* buf, std::size_t n, int peer) = 0;
  virtual void recv(float* buf, std::size_t n, int peer) = 0;

  /// Started collectives (gradient buckets while backward runs): each call returns before its
  /// collective is done; wait_started() returns when every one started so far is, and raises the
  /// first error. Each runs after the device work issued before its call, and they run in the order
  /// started; every rank must start the same ones in the same order. The buffers stay untouched by
  /// the caller until wait_started(), and the caller makes no other call on this object meanwhile.
  /// - MPI: on a thread of this object, over host memory (`MPI_THREAD_MULTIPLE`); where the build's
  ///   memory is not host memory, or MPI gives a lower thread level, at once, on the calling thread.
  /// - NCCL: on the communication stream, after an event recorded on Kokkos' stream; wait_started()
  ///   makes Kokkos' stream wait for the last one by another event (no device-wide synchronisation).
  /// buf (n) = sum over ranks, in place.
  virtual void start_all_reduce_sum(float* buf, std::size_t n) = 0;
  /// On rank `root`: recv (n) = sum over ranks of send (n); recv is not used on the other ranks.
  virtual void start_reduce_sum(const float* send, float* recv, std::size_t n, int root) = 0;
  /// On every rank: buf (n) = root's buf (n).
  virtual void start_broadcast(float* buf, std::size_t n, int root) = 0;
  /// A mark after the collectives started so far: wait_started(mark) returns when all of those are
  /// done (NCCL: makes Kokkos' stream wait for them), not waiting for any started later. A mark is
  /// valid until the next wait_started().
  virtual std::size_t started_mark() = 0;
  virtual void wait_started(std::size_t mark) = 0;
  virtual void wait_started() = 0;
  /// "a thread", "the communication stream" or "blocking": where started collectives run.
  virtual const char* started_on() const = 0;
};

enum class Backend { mpi, nccl };

/// "mpi", "nccl" or "auto" (NCCL when Kokkos runs on CUDA and NCCL was built, else MPI).
Backend parse_backend(const std::string& s);
bool nccl_available();

/// Collectives over `comm` (which must outlive them). NCCL shares its unique id over MPI.
std::unique_ptr<Collectives> make_collectives(Backend backend, const Comm& comm);

/// NCCL's version as "2.28.3", or "" when this build has no NCCL. Host call only.
std::string nccl_version();

}  // namespace tapestry::parallel
