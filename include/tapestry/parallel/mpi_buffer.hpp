#pragma once
/// \file
/// \brief Message buffers that MPI can read, on GPU builds under an MPI that cannot read device
/// memory too.

#include <cstddef>
#include <string>
#include <vector>

#include "tapestry/core/views.hpp"

namespace tapestry::parallel {

/// Whether MPI may be handed this build's device buffers: always for host memory spaces; on GPUs
/// when the MPI says it is CUDA-aware (Open MPI's MPIX_Query_cuda_support; other MPIs are assumed
/// not to be). TAPESTRY_MPI_STAGING=1 forces host copies everywhere (tests, and MPIs that claim
/// GPU support but fail).
bool mpi_reads_device_memory();

/// \brief n floats for MPI: the device buffer itself where MPI reads device memory (no copies),
/// a host copy otherwise. Fill it with `copy_from`, read it back with `copy_to`.
class MpiBuffer {
 public:
  MpiBuffer() = default;
  /// A buffer of its own (allocated in device memory or on the host, as MPI needs).
  MpiBuffer(const std::string& label, std::size_t n);
  /// A view of the device buffer `dev` (n floats): direct where MPI reads it, else a host copy.
  static MpiBuffer over(float* dev, std::size_t n);

  float* data() { return direct_ ? dev_ : host_.data(); }
  std::size_t size() const { return n_; }
  /// data() = src (n device floats); fenced, so MPI may read it at once.
  void copy_from(const ExecSpace& ex, const float* src);
  /// dst (n device floats) = data(); fenced.
  void copy_to(const ExecSpace& ex, float* dst);
  /// The device buffer given to `over`: filled from it (copy_in) / written back (copy_out).
  void copy_in(const ExecSpace& ex) { copy_from(ex, dev_); }
  void copy_out(const ExecSpace& ex) { copy_to(ex, dev_); }

 private:
  bool direct_ = true;
  float* dev_ = nullptr;
  std::size_t n_ = 0;
  View1<float> own_;         // a buffer of its own, in device memory, when direct
  std::vector<float> host_;  // the host copy, when not direct
};

}  // namespace tapestry::parallel
