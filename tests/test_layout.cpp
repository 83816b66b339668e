// The process grid as a pure value: no MPI needed.
#include <algorithm>
#include <set>
#include <vector>

#include "catch.hpp"
#include "tapestry/core/error.hpp"
#include "tapestry/parallel/layout.hpp"
#include "tapestry/parallel/pipeline_schedule.hpp"

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

// ---------------------------------------------------------------- 1F1B pipeline schedule
TEST_CASE("1F1B: warm-up, every micro-batch once each way, forward before backward", "[layout][pipeline]") {
  using tapestry::parallel::PipeOp;
  for (int S = 1; S <= 8; ++S)
    for (int M = 1; M <= 16; ++M)
      for (int s = 0; s < S; ++s) {
        CAPTURE(S, M, s);
        const auto ops = tapestry::parallel::one_f_one_b(S, s, M);
        REQUIRE(ops.size() == std::size_t(2 * M));
        std::vector<int> f_at(std::size_t(M), -1), b_at(std::size_t(M), -1);
        for (std::size_t i = 0; i < ops.size(); ++i) {
          auto& at = ops[i].kind == PipeOp::forward ? f_at : b_at;
          REQUIRE(at[std::size_t(ops[i].micro)] == -1);  // once
          at[std::size_t(ops[i].micro)] = int(i);
        }
        for (int m = 0; m < M; ++m) REQUIRE((f_at[std::size_t(m)] >= 0 && f_at[std::size_t(m)] < b_at[std::size_t(m)]));
        // warm-up: the forwards before the first backward
        int warm = 0;
        while (ops[std::size_t(warm)].kind == PipeOp::forward) ++warm;
        REQUIRE(warm == std::min(S - s - 1, M) + (M > S - s - 1 ? 1 : 0));
        // in flight (forwarded, not yet backwarded) never exceeds the warm-up depth + 1
        int in_flight = 0, most = 0;
        for (const auto& op : ops) most = std::max(most, in_flight += op.kind == PipeOp::forward ? 1 : -1);
        REQUIRE(most <= std::min(S - s, M));
      }
}

TEST_CASE("1F1B never deadlocks, for any stage and micro-batch count", "[layout][pipeline]") {
  for (int S = 1; S <= 8; ++S)
    for (int M = 1; M <= 16; ++M) {
      std::vector<std::vector<tapestry::parallel::PipeOp>> all;
      for (int s = 0; s < S; ++s) all.push_back(tapestry::parallel::one_f_one_b(S, s, M));
      CAPTURE(S, M);
      REQUIRE(tapestry::parallel::simulate(all).empty());
    }
  // and the simulator does see a deadlock: every stage starting with its backwards
  std::vector<std::vector<tapestry::parallel::PipeOp>> bad = {
      {{tapestry::parallel::PipeOp::backward, 0}, {tapestry::parallel::PipeOp::forward, 0}},
      {{tapestry::parallel::PipeOp::backward, 0}, {tapestry::parallel::PipeOp::forward, 0}}};
  REQUIRE(tapestry::parallel::simulate(bad) == "stage 0 waits forever at its backward of micro-batch 0");
  REQUIRE(tapestry::parallel::bubble_fraction(4, 8) == Approx(3.0 / 11.0));
  REQUIRE(tapestry::parallel::bubble_fraction(1, 8) == 0.0);
}
