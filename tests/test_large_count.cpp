// Transfers above MPI's int count (2^31 - 1 elements): every collective and point-to-point call
// the trainer uses, on 2^31 + 1000 one-byte elements per rank (parallel/large_count.hpp). At 2
// ranks the largest step, reduce-scatter, holds 2 x (2 + 1) x 2^31 bytes: about 13 GB in all.
#include <mpi.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "catch.hpp"
#include "mpi_helpers.hpp"
#include "tapestry/parallel/large_count.hpp"

using namespace tapestry;
using tapestry::test::all_ranks;

namespace {
constexpr std::size_t kN = (std::size_t(1) << 31) + 1000;

/// n bytes (value v), on transparent huge pages where the kernel allows them: this test touches
/// about 16 GB per rank, and in 4 KiB pages their faults took most of its time in a VM.
class Bytes {
 public:
  explicit Bytes(std::size_t n, std::uint8_t v = 0) : n_(n) {
    constexpr std::size_t kHuge = std::size_t(2) << 20;
    void* p = nullptr;
    if (posix_memalign(&p, kHuge, (n + kHuge - 1) / kHuge * kHuge) != 0) throw std::bad_alloc();
    p_ = static_cast<std::uint8_t*>(p);
#ifdef MADV_HUGEPAGE
    madvise(p_, (n + kHuge - 1) / kHuge * kHuge, MADV_HUGEPAGE);  // advice only: 4 KiB pages otherwise
#endif
    std::memset(p_, v, n);
  }
  ~Bytes() { std::free(p_); }
  Bytes(const Bytes&) = delete;
  Bytes& operator=(const Bytes&) = delete;
  std::uint8_t* data() { return p_; }
  std::uint8_t* begin() { return p_; }
  std::uint8_t* end() { return p_ + n_; }

 private:
  std::uint8_t* p_ = nullptr;
  std::size_t n_;
};

/// f(0), f(1), ... over a block of 2^16 whole periods p of f: what the two below copy or compare
/// (a loop computing each of 2^31 bytes took most of this test's minutes).
template <class F> std::vector<std::uint8_t> periodic_block(std::size_t p, F&& f) {
  std::vector<std::uint8_t> block(p << 16);
  for (std::size_t i = 0; i < block.size(); ++i) block[i] = std::uint8_t(f(i));
  return block;
}
/// v[i] = f(i) for i < n, where f repeats every p.
template <class F> void fill_periodic(std::uint8_t* v, std::size_t n, std::size_t p, F&& f) {
  const auto block = periodic_block(p, f);
  for (std::size_t i = 0; i < n; i += block.size()) std::memcpy(v + i, block.data(), std::min(block.size(), n - i));
}
/// Whether v[i] == f(i) for i < n, f repeating every p.
template <class F> bool equals_periodic(const std::uint8_t* v, std::size_t n, std::size_t p, F&& f) {
  const auto block = periodic_block(p, f);
  for (std::size_t i = 0; i < n; i += block.size())
    if (std::memcmp(v + i, block.data(), std::min(block.size(), n - i)) != 0) return false;
  return true;
}
}  // namespace

TEST_CASE("more than 2^31 elements through all-reduce, reduce-scatter, all-gather, broadcast, send/recv and isend/irecv", "[mpi][large]") {
  int rank = 0, P = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &P);
  const MPI_Comm w = MPI_COMM_WORLD;
  const std::size_t R = std::size_t(rank);
  // Every pattern below repeats in i (period 50 to 100), so fills and checks copy and compare
  // blocks of whole periods.
  {
    Bytes b(kN);
    fill_periodic(b.data(), kN, 100, [&](std::size_t i) { return (i + R) % 100; });
    parallel::all_reduce_sum(b.data(), kN, MPI_UINT8_T, 1, w);
    REQUIRE(all_ranks(equals_periodic(b.data(), kN, 100, [&](std::size_t i) {
      std::size_t s = 0;
      for (std::size_t q = 0; q < std::size_t(P); ++q) s += (i + q) % 100;
      return s;
    })));
  }
  {
    Bytes send(kN * std::size_t(P)), recv(kN);
    for (std::size_t r = 0; r < std::size_t(P); ++r)
      fill_periodic(send.data() + r * kN, kN, 50, [&](std::size_t i) { return (r * 7 + R * 3 + i) % 50; });
    parallel::reduce_scatter_sum(send.data(), recv.data(), kN, MPI_UINT8_T, 1, w);
    REQUIRE(all_ranks(equals_periodic(recv.data(), kN, 50, [&](std::size_t i) {
      std::size_t s = 0;
      for (std::size_t q = 0; q < std::size_t(P); ++q) s += (R * 7 + q * 3 + i) % 50;
      return s;
    })));
  }
  {
    Bytes b(kN * std::size_t(P), 0xEE);
    fill_periodic(b.data() + R * kN, kN, 60, [&](std::size_t i) { return (R * 5 + i) % 60; });
    parallel::all_gather_inplace(b.data(), kN, MPI_UINT8_T, 1, w);
    bool ok = true;
    for (std::size_t r = 0; r < std::size_t(P) && ok; ++r)
      ok = equals_periodic(b.data() + r * kN, kN, 60, [&](std::size_t i) { return (r * 5 + i) % 60; });
    REQUIRE(all_ranks(ok));
  }
  {
    Bytes b(kN, 0);
    const int root = P - 1;
    if (rank == root) fill_periodic(b.data(), kN, 77, [](std::size_t i) { return i % 77; });
    parallel::broadcast(b.data(), kN, MPI_UINT8_T, 1, root, w);
    REQUIRE(all_ranks(equals_periodic(b.data(), kN, 77, [](std::size_t i) { return i % 77; })));
  }
  if (P >= 2) {
    Bytes b(kN, 0);
    bool ok = true;
    if (rank == 0) {
      fill_periodic(b.data(), kN, 91, [](std::size_t i) { return i % 91; });
      parallel::send(b.data(), kN, MPI_UINT8_T, 1, 1, 7, w);
    } else if (rank == 1) {
      parallel::recv(b.data(), kN, MPI_UINT8_T, 1, 0, 7, w);
      ok = equals_periodic(b.data(), kN, 91, [](std::size_t i) { return i % 91; });
    }
    REQUIRE(all_ranks(ok));
    // the non-blocking pair (the pipeline's messages): chunks, one request each
    std::vector<MPI_Request> reqs;
    ok = true;
    if (rank == 0) {
      fill_periodic(b.data(), kN, 89, [](std::size_t i) { return i % 89; });
      parallel::isend(b.data(), kN, MPI_UINT8_T, 1, 1, 8, w, reqs);
    } else if (rank == 1) {
      std::fill(b.begin(), b.end(), std::uint8_t(0));
      parallel::irecv(b.data(), kN, MPI_UINT8_T, 1, 0, 8, w, reqs);
    }
    if (rank <= 1) ok = reqs.size() == (kN + parallel::kMaxCount - 1) / parallel::kMaxCount;
    MPI_Waitall(int(reqs.size()), reqs.data(), MPI_STATUSES_IGNORE);
    if (rank == 1) ok = ok && equals_periodic(b.data(), kN, 89, [](std::size_t i) { return i % 89; });
    REQUIRE(all_ranks(ok));
  }
}
