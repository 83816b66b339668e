#pragma once
// Test cases that cannot run at the rank count they were started with. Such a case declares the
// rank counts as tags ([skip_np2]); tapestry_mpi_test (tests/CMakeLists.txt) gives it an entry of
// its own there, in which it calls skip_case: the runner exits 77 and ctest reports the entry as
// Skipped, not Passed. skip_part says that part of a case did not run; the rest still counts.
#include <mpi.h>

#include <cstdio>
#include <string>

namespace tapestry::test {

inline int& whole_case_skips() {
  static int n = 0;
  return n;
}

/// Call, then return from the TEST_CASE: none of it can run at this rank count.
inline void skip_case(const std::string& why) {
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (rank == 0) std::printf("SKIPPED at %d ranks: %s\n", size, why.c_str());
  ++whole_case_skips();
}

/// Part of a case (one layout of several) cannot run at this rank count; the rest runs.
inline void skip_part(const std::string& why) {
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (rank == 0) std::printf("SKIPPED part at %d ranks: %s\n", size, why.c_str());
}

}  // namespace tapestry::test
