#pragma once
/// \file
/// \brief The one exception type user-facing errors travel in.

#include <stdexcept>
#include <string>

namespace tapestry {

/// \brief An error caused by the user's input (config, files, layout). Its message is one line that
/// names the problem; the CLI prints it as "tapestry: error: <what>" and exits non-zero.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

/// \brief A library call (NCCL, CUDA, cuBLAS, HDF5 I/O) failed in the middle of work that other
/// ranks share. Not the user's input: main prints one line naming the rank and the call and stops
/// the whole job (MPI_Abort), since the other ranks may be waiting in a collective.
class LibraryError : public std::runtime_error {
 public:
  explicit LibraryError(const std::string& what) : std::runtime_error(what) {}
};

/// \brief Throw `Error(msg)` unless `cond` holds.
inline void require(bool cond, const std::string& msg) {
  if (!cond) throw Error(msg);
}

}  // namespace tapestry
