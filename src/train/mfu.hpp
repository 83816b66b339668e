#pragma once
/// \file
/// \brief The peak FLOP/s that MFU divides by, for the ranks of a run.

#include <mpi.h>

#include "tapestry/parallel/comm.hpp"

namespace tapestry::train::detail {

/// The run's peak: each rank adds its share of `peak_flops`. On GPUs that is one device's peak per
/// rank; on CPUs `peak_flops` is the node's cores, shared by the ranks on the node (2 ranks on a
/// 2-core node run at most at the node's peak, not twice it). Collective over `world`.
inline double run_peak_flops(const parallel::Comm& world, double peak_flops) {
#ifdef KOKKOS_ENABLE_CUDA
  double share = peak_flops;
#else
  double share = peak_flops / world.split_shared().size();
#endif
  MPI_Allreduce(MPI_IN_PLACE, &share, 1, MPI_DOUBLE, MPI_SUM, world.get());
  return share;
}

}  // namespace tapestry::train::detail
