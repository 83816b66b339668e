#pragma once
/// \file
/// \brief Process-wide runtime guard: MPI and Kokkos initialised in order, finalised in reverse.

#include <mpi.h>

namespace tapestry::parallel {

/// \brief Owns MPI_Init_thread/MPI_Finalize and Kokkos::initialize/finalize for main().
/// Holds the world communicator as a value; nothing global.
class Runtime {
 public:
  Runtime(int& argc, char**& argv);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  MPI_Comm world() const { return MPI_COMM_WORLD; }
  int rank() const { return rank_; }
  int size() const { return size_; }

 private:
  int rank_ = 0, size_ = 1;
};

}  // namespace tapestry::parallel
