#include "tapestry/parallel/mpi_buffer.hpp"

#include <mpi.h>

#include <cstdlib>
#include <cstring>
#if __has_include(<mpi-ext.h>)
#include <mpi-ext.h>  // Open MPI: MPIX_Query_cuda_support
#endif

namespace tapestry::parallel {

bool mpi_reads_device_memory() {
  // Asked once per process: every collective call and pipeline message consults it.
  static const bool reads = [] {
    const char* force = std::getenv("TAPESTRY_MPI_STAGING");
    if (force && std::strcmp(force, "1") == 0) return false;
    if constexpr (Kokkos::SpaceAccessibility<Kokkos::HostSpace, MemSpace>::accessible) return true;
#if defined(MPIX_CUDA_AWARE_SUPPORT) && MPIX_CUDA_AWARE_SUPPORT
    return MPIX_Query_cuda_support() == 1;
#else
    return false;
#endif
  }();
  return reads;
}

namespace {
using Unmanaged = Kokkos::MemoryTraits<Kokkos::Unmanaged>;
using HostFloats = Kokkos::View<float*, tapestry::Layout, HostSpace, Unmanaged>;
using DeviceFloats = Kokkos::View<float*, tapestry::Layout, MemSpace, Unmanaged>;
}  // namespace

MpiBuffer::MpiBuffer(const std::string& label, std::size_t n) : direct_(mpi_reads_device_memory()), n_(n) {
  if (direct_) {
    own_ = View1<float>(label, n);
    dev_ = own_.data();
  } else {
    host_.assign(n, 0.0f);
  }
}

MpiBuffer MpiBuffer::over(float* dev, std::size_t n) {
  MpiBuffer b;
  b.direct_ = mpi_reads_device_memory();
  b.dev_ = dev;
  b.n_ = n;
  if (!b.direct_) b.host_.resize(n);
  return b;
}

void MpiBuffer::copy_from(const ExecSpace& ex, const float* src) {
  if (direct_ && src == dev_) {
    ex.fence();
    return;
  }
  if (direct_) Kokkos::deep_copy(ex, DeviceFloats(dev_, n_), DeviceFloats(const_cast<float*>(src), n_));
  else Kokkos::deep_copy(ex, HostFloats(host_.data(), n_), DeviceFloats(const_cast<float*>(src), n_));
  ex.fence();
}

void MpiBuffer::copy_to(const ExecSpace& ex, float* dst) {
  if (direct_ && dst == dev_) return;
  if (direct_) Kokkos::deep_copy(ex, DeviceFloats(dst, n_), DeviceFloats(dev_, n_));
  else Kokkos::deep_copy(ex, DeviceFloats(dst, n_), HostFloats(host_.data(), n_));
  ex.fence();
}

}  // namespace tapestry::parallel
