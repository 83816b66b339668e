#pragma once
/// \file
/// \brief The process grid as a pure value: world = dp x pp x tp, tp varying fastest.

#include <string>
#include <vector>

namespace tapestry::parallel {

/// \brief A rank's position on the grid.
struct Coord {
  int dp = 0, pp = 0, tp = 0;
  bool operator==(const Coord& o) const { return dp == o.dp && pp == o.pp && tp == o.tp; }
};

/// \brief Maps ranks to (dp, pp, tp) coordinates and back. No MPI: unit-testable anywhere.
/// tp varies fastest, so a TP group is consecutive ranks (inside a node when ranks fill nodes in
/// order); dp varies slowest.
class Layout {
 public:
  /// `dp` = 0 infers dp = world / (tp * pp). Throws tapestry::Error when the sizes do not multiply
  /// to `world`.
  static Layout make(int world, int tp, int pp, int dp = 0);

  int world() const { return tp_ * pp_ * dp_; }
  int tp() const { return tp_; }
  int pp() const { return pp_; }
  int dp() const { return dp_; }

  int rank_of(const Coord& c) const { return (c.dp * pp_ + c.pp) * tp_ + c.tp; }
  Coord coord_of(int rank) const { return {rank / (tp_ * pp_), (rank / tp_) % pp_, rank % tp_}; }

  /// Ranks that differ from `rank` only in that coordinate, in coordinate order.
  std::vector<int> dp_group(int rank) const;
  std::vector<int> pp_group(int rank) const;
  std::vector<int> tp_group(int rank) const;

  std::string describe() const;  ///< "dp=2 x pp=1 x tp=1 (2 ranks)"

 private:
  Layout(int tp, int pp, int dp) : tp_(tp), pp_(pp), dp_(dp) {}
  int tp_, pp_, dp_;
};

}  // namespace tapestry::parallel
