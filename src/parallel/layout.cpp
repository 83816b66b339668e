#include "tapestry/parallel/layout.hpp"

#include "tapestry/core/error.hpp"

namespace tapestry::parallel {

Layout Layout::make(int world, int tp, int pp, int dp) {
  const auto s = [](int v) { return std::to_string(v); };
  require(world >= 1, "world size must be >= 1");
  require(tp >= 1 && pp >= 1 && dp >= 0, "--tp and --pp must be >= 1 and --dp >= 1 (got tp=" + s(tp) +
                                             " pp=" + s(pp) + " dp=" + s(dp) + ")");
  if (dp == 0) {
    require(world % (tp * pp) == 0, "layout tp=" + s(tp) + " x pp=" + s(pp) + " does not divide the " +
                                        s(world) + " ranks");
    dp = world / (tp * pp);
  }
  require(tp * pp * dp == world, "layout dp=" + s(dp) + " x pp=" + s(pp) + " x tp=" + s(tp) + " = " +
                                     s(dp * pp * tp) + " ranks, but the job has " + s(world));
  return Layout(tp, pp, dp);
}

std::vector<int> Layout::dp_group(int rank) const {
  Coord c = coord_of(rank);
  std::vector<int> g;
  for (c.dp = 0; c.dp < dp_; ++c.dp) g.push_back(rank_of(c));
  return g;
}

std::vector<int> Layout::pp_group(int rank) const {
  Coord c = coord_of(rank);
  std::vector<int> g;
  for (c.pp = 0; c.pp < pp_; ++c.pp) g.push_back(rank_of(c));
  return g;
}

std::vector<int> Layout::tp_group(int rank) const {
  Coord c = coord_of(rank);
  std::vector<int> g;
  for (c.tp = 0; c.tp < tp_; ++c.tp) g.push_back(rank_of(c));
  return g;
}

std::string Layout::describe() const {
  return "dp=" + std::to_string(dp_) + " x pp=" + std::to_string(pp_) + " x tp=" + std::to_string(tp_) +
         " (" + std::to_string(world()) + " ranks)";
}

}  // namespace tapestry::parallel
