#include "tapestry/parallel/comm.hpp"

#include <climits>
#include <utility>

#include "tapestry/core/error.hpp"

namespace tapestry::parallel {

Comm::~Comm() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (owned_ && comm_ != MPI_COMM_NULL && !finalized) MPI_Comm_free(&comm_);
}

Comm::Comm(Comm&& o) noexcept : comm_(std::exchange(o.comm_, MPI_COMM_NULL)), owned_(std::exchange(o.owned_, false)) {}

Comm& Comm::operator=(Comm&& o) noexcept {
  if (this != &o) {
    Comm tmp(std::move(*this));
    comm_ = std::exchange(o.comm_, MPI_COMM_NULL);
    owned_ = std::exchange(o.owned_, false);
  }
  return *this;
}

int Comm::rank() const {
  int r = 0;
  MPI_Comm_rank(comm_, &r);
  return r;
}

int Comm::size() const {
  int s = 1;
  MPI_Comm_size(comm_, &s);
  return s;
}

Comm Comm::split(int color, int key) const {
  MPI_Comm c = MPI_COMM_NULL;
  MPI_Comm_split(comm_, color, key, &c);
  return adopt(c);
}

Comm Comm::split_shared() const {
  MPI_Comm c = MPI_COMM_NULL;
  MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank(), MPI_INFO_NULL, &c);
  return adopt(c);
}

void Comm::barrier() const { MPI_Barrier(comm_); }

void agree(const Comm& comm, const std::function<void()>& f) {
  std::exception_ptr mine;
  try {
    f();
  } catch (const Error&) {
    mine = std::current_exception();
  }
  int me = mine ? comm.rank() : INT_MAX, first = INT_MAX;
  MPI_Allreduce(&me, &first, 1, MPI_INT, MPI_MIN, comm.get());
  if (first == INT_MAX) return;
  if (first == comm.rank()) std::rethrow_exception(mine);
  throw PeerError();
}

ProcessGrid::ProcessGrid(MPI_Comm world, const Layout& layout)
    : layout_(layout), world_(Comm::view(world)) {
  const int r = world_.rank();
  require(world_.size() == layout_.world(), "process grid " + layout_.describe() + " does not match the " +
                                                std::to_string(world_.size()) + " ranks of the job");
  coord_ = layout_.coord_of(r);
  const Coord& c = coord_;
  // color = the coordinates that stay fixed; key = the one that varies.
  dp_ = world_.split(c.pp * layout_.tp() + c.tp, c.dp);
  pp_ = world_.split(c.dp * layout_.tp() + c.tp, c.pp);
  tp_ = world_.split(c.dp * layout_.pp() + c.pp, c.tp);
  node_ = world_.split_shared();
}

}  // namespace tapestry::parallel
