#pragma once
/// \file
/// \brief Process-wide runtime guard: MPI and Kokkos initialised in order, finalised in reverse.

#include <mpi.h>

#include <string>

namespace tapestry::parallel {

/// \brief Owns MPI_Init_thread/MPI_Finalize and Kokkos::initialize/finalize for main().
/// Holds the world communicator as a value; nothing global.
///
/// On CUDA builds each rank takes the GPU of its node-local rank (MPI_Comm_split_type), or device 0
/// when it sees exactly one (a scheduler's per-task binding). No GPU, more ranks on a node than
/// GPUs, or a GPU older than the build's architecture: the ranks at fault print one error line
/// naming rank, node and device, and every rank exits with status 1.
class Runtime {
 public:
  Runtime(int& argc, char**& argv);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  MPI_Comm world() const { return MPI_COMM_WORLD; }
  int rank() const { return rank_; }
  int size() const { return size_; }
  /// On rank 0 of a CUDA build: one line per rank naming its node and GPU; empty otherwise.
  const std::string& devices() const { return devices_; }
  /// The Kokkos version, execution space and host threads of this rank, as one line.
  const std::string& backend() const { return backend_; }

 private:
  int rank_ = 0, size_ = 1;
  std::string devices_, backend_;
};

}  // namespace tapestry::parallel
