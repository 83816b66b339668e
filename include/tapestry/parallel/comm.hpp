#pragma once
/// \file
/// \brief RAII MPI communicators and the process grid's communicators.

#include <mpi.h>

#include <functional>
#include <stdexcept>

#include "tapestry/parallel/layout.hpp"

namespace tapestry::parallel {

/// \brief Owns an MPI communicator (MPI_Comm_free on destruction) or views one it does not own
/// (MPI_COMM_WORLD, MPI_COMM_SELF). Move-only.
class Comm {
 public:
  Comm() = default;
  /// A non-owning view, e.g. of MPI_COMM_WORLD.
  static Comm view(MPI_Comm c) { return Comm(c, false); }
  /// Takes ownership of `c`.
  static Comm adopt(MPI_Comm c) { return Comm(c, true); }
  ~Comm();
  Comm(Comm&& o) noexcept;
  Comm& operator=(Comm&& o) noexcept;
  Comm(const Comm&) = delete;
  Comm& operator=(const Comm&) = delete;

  MPI_Comm get() const { return comm_; }
  int rank() const;
  int size() const;
  /// MPI_Comm_split (collective over this communicator).
  Comm split(int color, int key) const;
  /// Ranks that share memory with this one (a node): MPI_Comm_split_type(MPI_COMM_TYPE_SHARED).
  Comm split_shared() const;
  void barrier() const;

 private:
  Comm(MPI_Comm c, bool owned) : comm_(c), owned_(owned) {}
  MPI_Comm comm_ = MPI_COMM_NULL;
  bool owned_ = false;
};

/// \brief Thrown on ranks that did not see an error themselves when another rank did (see agree()).
/// main() exits non-zero without printing, so the job prints the error line exactly once.
class PeerError : public std::runtime_error {
 public:
  PeerError() : std::runtime_error("another rank failed") {}
};

/// Runs `f` on every rank of `comm`; if it throws tapestry::Error on any rank, the lowest such rank
/// rethrows its error and every other rank throws PeerError. Keeps an error on one rank from
/// leaving the others waiting in a collective. Collective.
void agree(const Comm& comm, const std::function<void()>& f);

/// \brief The communicators of one rank on the process grid. Built collectively over `world`.
class ProcessGrid {
 public:
  ProcessGrid(MPI_Comm world, const Layout& layout);

  const Layout& layout() const { return layout_; }
  const Coord& coord() const { return coord_; }
  const Comm& world() const { return world_; }
  const Comm& dp() const { return dp_; }  ///< same (pp, tp), all dp
  const Comm& pp() const { return pp_; }  ///< same (dp, tp), all pp
  const Comm& tp() const { return tp_; }  ///< same (dp, pp), all tp
  const Comm& node() const { return node_; }  ///< ranks sharing this rank's memory

 private:
  Layout layout_;
  Coord coord_;
  Comm world_, dp_, pp_, tp_, node_;
};

}  // namespace tapestry::parallel
