// Transfers above MPI's int count (2^31 - 1 elements): every collective and point-to-point call
// the trainer uses, on 2^31 + 1000 one-byte elements per rank (parallel/large_count.hpp). At 2
// ranks the largest step, reduce-scatter, holds 2 x (2 + 1) x 2^31 bytes: about 13 GB in all.
#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "catch.hpp"
#include "mpi_helpers.hpp"
#include "tapestry/parallel/large_count.hpp"

using namespace tapestry;
using tapestry::test::all_ranks;

namespace {
constexpr std::size_t kN = (std::size_t(1) << 31) + 1000;
}  // namespace

TEST_CASE("more than 2^31 elements through all-reduce, reduce-scatter, all-gather, broadcast, send/recv and isend/irecv", "[mpi][large]") {
  int rank = 0, P = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &P);
  const MPI_Comm w = MPI_COMM_WORLD;
  const std::size_t R = std::size_t(rank);
  auto check = [&](const std::vector<std::uint8_t>& v, std::size_t n, auto&& expect) {
    bool ok = true;
    for (std::size_t i = 0; i < n && ok; ++i) ok = v[i] == std::uint8_t(expect(i));
    return ok;
  };
  {
    std::vector<std::uint8_t> b(kN);
    for (std::size_t i = 0; i < kN; ++i) b[i] = std::uint8_t((i + R) % 100);
    parallel::all_reduce_sum(b.data(), kN, MPI_UINT8_T, 1, w);
    REQUIRE(all_ranks(check(b, kN, [&](std::size_t i) {
      std::size_t s = 0;
      for (std::size_t q = 0; q < std::size_t(P); ++q) s += (i + q) % 100;
      return s;
    })));
  }
  {
    std::vector<std::uint8_t> send(kN * std::size_t(P)), recv(kN);
    for (std::size_t r = 0; r < std::size_t(P); ++r)
      for (std::size_t i = 0; i < kN; ++i) send[r * kN + i] = std::uint8_t((r * 7 + R * 3 + i) % 50);
    parallel::reduce_scatter_sum(send.data(), recv.data(), kN, MPI_UINT8_T, 1, w);
    REQUIRE(all_ranks(check(recv, kN, [&](std::size_t i) {
      std::size_t s = 0;
      for (std::size_t q = 0; q < std::size_t(P); ++q) s += (R * 7 + q * 3 + i) % 50;
      return s;
    })));
  }
  {
    std::vector<std::uint8_t> b(kN * std::size_t(P), 0xEE);
    for (std::size_t i = 0; i < kN; ++i) b[R * kN + i] = std::uint8_t((R * 5 + i) % 60);
    parallel::all_gather_inplace(b.data(), kN, MPI_UINT8_T, 1, w);
    bool ok = true;
    for (std::size_t r = 0; r < std::size_t(P) && ok; ++r)
      for (std::size_t i = 0; i < kN && ok; ++i) ok = b[r * kN + i] == std::uint8_t((r * 5 + i) % 60);
    REQUIRE(all_ranks(ok));
  }
  {
    std::vector<std::uint8_t> b(kN, 0);
    const int root = P - 1;
    if (rank == root)
      for (std::size_t i = 0; i < kN; ++i) b[i] = std::uint8_t(i % 77);
    parallel::broadcast(b.data(), kN, MPI_UINT8_T, 1, root, w);
    REQUIRE(all_ranks(check(b, kN, [](std::size_t i) { return i % 77; })));
  }
  if (P >= 2) {
    std::vector<std::uint8_t> b(kN, 0);
    bool ok = true;
    if (rank == 0) {
      for (std::size_t i = 0; i < kN; ++i) b[i] = std::uint8_t(i % 91);
      parallel::send(b.data(), kN, MPI_UINT8_T, 1, 1, 7, w);
    } else if (rank == 1) {
      parallel::recv(b.data(), kN, MPI_UINT8_T, 1, 0, 7, w);
      ok = check(b, kN, [](std::size_t i) { return i % 91; });
    }
    REQUIRE(all_ranks(ok));
    // the non-blocking pair (the pipeline's messages): chunks, one request each
    std::vector<MPI_Request> reqs;
    ok = true;
    if (rank == 0) {
      for (std::size_t i = 0; i < kN; ++i) b[i] = std::uint8_t(i % 89);
      parallel::isend(b.data(), kN, MPI_UINT8_T, 1, 1, 8, w, reqs);
    } else if (rank == 1) {
      std::fill(b.begin(), b.end(), std::uint8_t(0));
      parallel::irecv(b.data(), kN, MPI_UINT8_T, 1, 0, 8, w, reqs);
    }
    if (rank <= 1) ok = reqs.size() == (kN + parallel::kMaxCount - 1) / parallel::kMaxCount;
    MPI_Waitall(int(reqs.size()), reqs.data(), MPI_STATUSES_IGNORE);
    if (rank == 1) ok = ok && check(b, kN, [](std::size_t i) { return i % 89; });
    REQUIRE(all_ranks(ok));
  }
}
