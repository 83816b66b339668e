#include "tapestry/parallel/collectives.hpp"

#include "tapestry/core/error.hpp"
#include "tapestry/core/views.hpp"

namespace tapestry::parallel {

std::unique_ptr<Collectives> make_mpi_collectives(const Comm& comm);
#ifdef TAPESTRY_HAVE_NCCL
std::unique_ptr<Collectives> make_nccl_collectives(const Comm& comm);
#else
std::string nccl_version() { return ""; }
#endif

bool nccl_available() {
#ifdef TAPESTRY_HAVE_NCCL
  return true;
#else
  return false;
#endif
}

Backend parse_backend(const std::string& s) {
  if (s == "mpi") return Backend::mpi;
  if (s == "nccl") {
    require(nccl_available(), "collectives backend 'nccl' requested, but this build has no NCCL");
    return Backend::nccl;
  }
  require(s == "auto", "unknown collectives backend '" + s + "' (use mpi, nccl or auto)");
#if defined(TAPESTRY_HAVE_NCCL) && defined(KOKKOS_ENABLE_CUDA)
  return Backend::nccl;
#else
  return Backend::mpi;
#endif
}

std::unique_ptr<Collectives> make_collectives(Backend backend, const Comm& comm) {
#ifdef TAPESTRY_HAVE_NCCL
  if (backend == Backend::nccl) return make_nccl_collectives(comm);
#else
  require(backend != Backend::nccl, "this build has no NCCL");
#endif
  return make_mpi_collectives(comm);
}

}  // namespace tapestry::parallel
