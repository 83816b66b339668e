#pragma once
/// \file
/// \brief Federation: separately launched jobs (one per site, e.g. one Slurm job on each
/// supercomputer) join one communicator through MPI's dynamic-process calls, with Open MPI's
/// `ompi-server` as the rendezvous (every job's mpirun gets `--ompi-server file:URI`).

#include <string>

#include "tapestry/parallel/comm.hpp"

namespace tapestry::parallel {

/// \brief Which federation this job joins, and as which site.
struct FederationSpec {
  std::string name;        ///< service name published at the rendezvous (the run's name)
  int site = 0;            ///< this job's site, 0 .. sites-1; site 0 hosts (publishes the port)
  int sites = 2;           ///< jobs that make up the run
  double timeout_s = 120;  ///< all sites must have joined within this
};

/// Joins the jobs of `spec` into one communicator ordered by site, then by rank inside the site.
/// Collective over `local` (this job's ranks). `fingerprint` (model, layout, batch...) must be
/// identical at every site. Throws tapestry::Error (on the first rank of each site; PeerError on
/// the others) when sites disagree on the fingerprint, differ in size or claim the same site
/// number. When the federation is not complete within the timeout (rendezvous unreachable, a site
/// missing), prints one error line per site and exits the process with status 1: MPI has no way
/// to abandon a pending accept or connect.
Comm federate(const Comm& local, const FederationSpec& spec, const std::string& fingerprint);

}  // namespace tapestry::parallel
