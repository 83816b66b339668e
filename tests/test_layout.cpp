// The process grid as a pure value: no MPI needed.
#include <set>

#include "catch.hpp"
#include "tapestry/core/error.hpp"
#include "tapestry/parallel/layout.hpp"

using namespace tapestry;
using tapestry::parallel::Coord;
using tapestry::parallel::Layout;

TEST_CASE("rank <-> (dp, pp, tp) is a bijection with tp fastest", "[layout]") {
  for (auto [world, tp, pp] : {std::tuple{1, 1, 1}, std::tuple{8, 2, 2}, std::tuple{12, 3, 2}, std::tuple{6, 1, 6}}) {
    const auto l = Layout::make(world, tp, pp);
    CAPTURE(world, tp, pp);
    REQUIRE(l.dp() == world / (tp * pp));
    std::set<int> seen;
    for (int r = 0; r < world; ++r) {
      const Coord c = l.coord_of(r);
      REQUIRE(l.rank_of(c) == r);
      REQUIRE(c.tp == r % tp);  // consecutive ranks share a TP group
      seen.insert(r);
      // groups: the rank is in each, sizes match, members differ only in that coordinate
      const auto g = l.tp_group(r);
      REQUIRE(int(g.size()) == tp);
      for (int m : g) REQUIRE((l.coord_of(m).dp == c.dp && l.coord_of(m).pp == c.pp));
      REQUIRE(int(l.pp_group(r).size()) == pp);
      REQUIRE(int(l.dp_group(r).size()) == l.dp());
      for (int m : l.dp_group(r)) REQUIRE((l.coord_of(m).tp == c.tp && l.coord_of(m).pp == c.pp));
    }
    REQUIRE(int(seen.size()) == world);
  }
  REQUIRE(Layout::make(8, 2, 2).tp_group(5) == std::vector<int>{4, 5});
  REQUIRE(Layout::make(8, 2, 2).dp_group(5) == std::vector<int>{1, 5});
  REQUIRE(Layout::make(8, 2, 2).pp_group(5) == std::vector<int>{5, 7});
}

TEST_CASE("a layout that does not divide the world is one clear error", "[layout][bad-input]") {
  REQUIRE_THROWS_WITH(Layout::make(6, 4, 1), "layout tp=4 x pp=1 does not divide the 6 ranks");
  REQUIRE_THROWS_WITH(Layout::make(8, 2, 1, 3), "layout dp=3 x pp=1 x tp=2 = 6 ranks, but the job has 8");
  REQUIRE_THROWS_AS(Layout::make(4, 0, 1), Error);
  REQUIRE(Layout::make(8, 2, 1, 4).describe() == "dp=4 x pp=1 x tp=2 (8 ranks)");
}
