// The collectives interface under mpirun, against values computed from size() (any rank count).
#include <mpi.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <cmath>
#include <numeric>

#include "catch.hpp"
#include "mpi_helpers.hpp"
#include "skip.hpp"
#include "tapestry/core/views.hpp"
#include "tapestry/parallel/collectives.hpp"
#include "tapestry/core/error.hpp"
#include "tapestry/parallel/grad_reducer.hpp"
#include "tapestry/parallel/hierarchical.hpp"
#include "tapestry/parallel/mpi_buffer.hpp"

using namespace tapestry;
using namespace tapestry::parallel;

using tapestry::test::all_ranks;

namespace {
std::vector<float> host(const View1<float>& v) {
  std::vector<float> h(v.extent(0));
  Kokkos::deep_copy(Kokkos::View<float*, tapestry::Layout, HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(h.data(), h.size()), v);
  return h;
}
View1<float> device(const std::vector<float>& h) {
  View1<float> v("v", h.size());
  Kokkos::deep_copy(v, Kokkos::View<const float*, tapestry::Layout, HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(h.data(), h.size()));
  return v;
}
}  // namespace

TEST_CASE("MPI collectives: all-reduce, reduce-scatter, all-gather, broadcast, send/recv", "[case_coll_mpi][mpi][collectives]") {
  const auto world = Comm::view(MPI_COMM_WORLD);
  auto c = make_collectives(Backend::mpi, world);
  const int P = c->size(), r = c->rank();
  REQUIRE(P == world.size());
  const std::size_t n = 13;  // odd on purpose
  bool ok = true;

  // all-reduce: element i of rank q holds q + i  ->  sum = P*i + P(P-1)/2
  std::vector<float> x(n);
  for (std::size_t i = 0; i < n; ++i) x[i] = float(r) + float(i);
  auto v = device(x);
  c->all_reduce_sum(v.data(), n);
  auto y = host(v);
  for (std::size_t i = 0; i < n; ++i) ok = ok && y[i] == float(P) * float(i) + float(P * (P - 1) / 2);

  // reduce-scatter: P blocks of n; rank q's shard = sum over ranks of block q
  std::vector<float> big(std::size_t(P) * n);
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = float(i) + float(r);
  auto vb = device(big);
  View1<float> shard("shard", n);
  c->reduce_scatter_sum(vb.data(), shard.data(), n);
  auto s = host(shard);
  for (std::size_t i = 0; i < n; ++i) ok = ok && s[i] == float(P) * float(std::size_t(r) * n + i) + float(P * (P - 1) / 2);

  // all-gather in place: rank q fills block q with q
  std::vector<float> g(std::size_t(P) * n, -1.0f);
  for (std::size_t i = 0; i < n; ++i) g[std::size_t(r) * n + i] = float(r);
  auto vg = device(g);
  c->all_gather_inplace(vg.data(), n);
  auto gg = host(vg);
  for (std::size_t i = 0; i < gg.size(); ++i) ok = ok && gg[i] == float(i / n);

  // broadcast from the last rank
  std::vector<float> b(n, float(r));
  auto vbc = device(b);
  c->broadcast(vbc.data(), n, P - 1);
  for (float e : host(vbc)) ok = ok && e == float(P - 1);

  // ring send/recv (even ranks send first)
  if (P > 1) {
    auto out = device(std::vector<float>(n, float(r)));
    View1<float> in("in", n);
    const int next = (r + 1) % P, prev = (r + P - 1) % P;
    if (r % 2 == 0) {
      c->send(out.data(), n, next);
      c->recv(in.data(), n, prev);
    } else {
      c->recv(in.data(), n, prev);
      c->send(out.data(), n, next);
    }
    for (float e : host(in)) ok = ok && e == float(prev);
  }
  REQUIRE(all_ranks(ok));
}

TEST_CASE("the bucketed flat reducer equals one all-reduce for any bucket size", "[case_coll_buckets][mpi][collectives]") {
  const auto world = Comm::view(MPI_COMM_WORLD);
  auto c = make_collectives(Backend::mpi, world);
  const int P = c->size(), r = c->rank();
  const std::size_t n = 1000 * std::size_t(P);
  bool ok = true;
  for (std::size_t bucket_bytes : {std::size_t(4), std::size_t(4 * 333), std::size_t(1) << 20}) {
    FlatReducer red(*c, bucket_bytes);
    std::vector<float> x(n);
    for (std::size_t i = 0; i < n; ++i) x[i] = float(i % 97) * float(r + 1);
    auto v = device(x);
    red.all_reduce_sum(v.data(), n);
    const float k = float(P * (P + 1) / 2);
    auto y = host(v);
    for (std::size_t i = 0; i < n; ++i) ok = ok && y[i] == float(i % 97) * k;
    // reduce-scatter then all-gather of the shard gives the same sums everywhere
    auto v2 = device(x);
    View1<float> shard("shard", n / std::size_t(P));
    red.reduce_scatter_sum(v2.data(), shard.data(), n);
    Kokkos::deep_copy(View1<float>(v2.data() + std::size_t(r) * (n / std::size_t(P)), n / std::size_t(P)), shard);
    red.all_gather(v2.data(), n);
    ok = ok && host(v2) == y;
  }
  REQUIRE(all_ranks(ok));
  REQUIRE_THROWS_AS(FlatReducer(*c, 0), tapestry::Error);
}

TEST_CASE("MPI message buffers: direct where MPI reads the memory, host copies otherwise", "[case_coll_staging][collectives][staging]") {
  // TAPESTRY_MPI_STAGING=1 (the *_staged CTest runs) forces the host copies that a GPU build
  // under a non-CUDA-aware MPI uses; on this host build MPI reads the buffers directly otherwise.
  const char* force = std::getenv("TAPESTRY_MPI_STAGING");
  const bool staged = force && std::string(force) == "1";
  if (staged) REQUIRE_FALSE(mpi_reads_device_memory());
  else if (Kokkos::SpaceAccessibility<Kokkos::HostSpace, MemSpace>::accessible) REQUIRE(mpi_reads_device_memory());
  ExecSpace ex;
  auto v = device({1, 2, 3, 4, 5});
  auto b = MpiBuffer::over(v.data(), 5);
  REQUIRE(b.size() == 5);
  REQUIRE((b.data() == v.data()) == mpi_reads_device_memory());
  b.copy_in(ex);
  for (int i = 0; i < 5; ++i) b.data()[i] *= 10;  // what an MPI receive would write (host-readable here)
  b.copy_out(ex);
  REQUIRE(host(v) == std::vector<float>{10, 20, 30, 40, 50});
  MpiBuffer own("own", 3);
  auto w = device({7, 8, 9});
  own.copy_from(ex, w.data());
  auto z = device({0, 0, 0});
  own.copy_to(ex, z.data());
  REQUIRE(host(z) == std::vector<float>{7, 8, 9});
}

TEST_CASE("backend selection and NCCL's presence", "[case_coll_backend][collectives]") {
  REQUIRE(parse_backend("mpi") == Backend::mpi);
  REQUIRE_THROWS_WITH(parse_backend("gloo"), "unknown collectives backend 'gloo' (use mpi, nccl or auto)");
  if (nccl_available()) {
    // Built against NCCL (CUDA toolkit present): its host API answers even without a GPU.
    const std::string v = nccl_version();
    CAPTURE(v);
    REQUIRE(v.rfind("2.", 0) == 0);
  } else {
    REQUIRE(nccl_version().empty());
    REQUIRE_THROWS_AS(parse_backend("nccl"), tapestry::Error);
  }
}

TEST_CASE("the hierarchical reducer equals the flat one for every site split and size", "[case_coll_hier][mpi][collectives][sites]") {
  const auto world = Comm::view(MPI_COMM_WORLD);
  auto flat_coll = make_collectives(Backend::mpi, world);
  const int P = flat_coll->size(), r = flat_coll->rank();
  FlatReducer flat(*flat_coll, std::size_t(1) << 20);
  bool ok = true;
  for (int sites = 1; sites <= P; ++sites) {
    if (P % sites != 0) continue;
    SiteTopology topo(world, SiteTopology::site_of(r, P, sites), sites);
    ok = ok && topo.num_sites() == sites && topo.cross_site().size() == sites;
    HierarchicalReducer hier(topo, Backend::mpi, *flat_coll);
    for (std::size_t n : {std::size_t(1), std::size_t(13), std::size_t(1000), std::size_t(4097)}) {
      // small integers: every summation order gives the exact same floats
      std::vector<float> x(n);
      for (std::size_t i = 0; i < n; ++i) x[i] = float((i * 7 + std::size_t(r) * 3) % 11);
      auto a = device(x), b = device(x);
      flat.all_reduce_sum(a.data(), n);
      hier.all_reduce_sum(b.data(), n);
      ok = ok && host(a) == host(b);
      // ZeRO-1 pieces: sharded over the ranks of a site; rank j of a site gets slice j of the sum
      const std::size_t k = std::size_t(topo.site_ranks().size()), j = std::size_t(topo.site_ranks().rank());
      const std::size_t m = n * k;
      std::vector<float> y(m);
      for (std::size_t i = 0; i < m; ++i) y[i] = float((i + std::size_t(r)) % 5);
      auto c = device(y), d = device(y);
      View1<float> s2("s2", n);
      flat.all_reduce_sum(c.data(), m);
      hier.reduce_scatter_sum(d.data(), s2.data(), m);
      const auto full = host(c), mine = host(s2);
      ok = ok && std::equal(mine.begin(), mine.end(), full.begin() + std::ptrdiff_t(j * n));
      // and the all-gather inside the site puts every slice back
      auto e = device(std::vector<float>(m, 0.0f));
      Kokkos::deep_copy(View1<float>(e.data() + j * n, n), s2);
      hier.all_gather(e.data(), m);
      ok = ok && host(e) == full;
    }
  }
  REQUIRE(all_ranks(ok));
}

TEST_CASE("a site count that does not divide the DP ranks is an error", "[case_coll_sites_bad][collectives][sites][bad-input]") {
  REQUIRE_THROWS_WITH(SiteTopology::site_of(0, 6, 4), "--sites 4 does not divide the 6 data-parallel ranks");
  REQUIRE(SiteTopology::site_of(5, 6, 3) == 2);
}

TEST_CASE("weighted cross-site sums: sum of w_s x_s / sum of w_s, headers returned in site order", "[case_coll_weighted][skip_np1][mpi][collectives][sites]") {
  const auto world = Comm::view(MPI_COMM_WORLD);
  auto flat_coll = make_collectives(Backend::mpi, world);
  const int P = flat_coll->size(), r = flat_coll->rank();
  if (P == 1) return test::skip_case("one rank is one site: nothing crosses");
  const std::size_t n = 700;
  auto value = [](std::size_t i, int s) { return float(std::cos(0.11 * double(i) + s) * (1 + s)); };
  std::vector<float> x(n);
  for (std::size_t i = 0; i < n; ++i) x[i] = value(i, r);
  double wsum = 0, amax = 0;
  for (int s = 0; s < P; ++s) wsum += s + 1, amax = std::max(amax, 1.0 + s);
  bool ok = true;
  for (auto c : {kernels::Compression::none, kernels::Compression::int8}) {
    for (const bool background : {false, true}) {
      CrossSiteSum xs(*flat_coll, world, c);
      auto v = device(x);
      View1<float> residual("res", n);
      CrossSiteSum::Header h;
      h.weight = float(r + 1), h.value = 10.0f * float(r), h.total = 100.0f + float(r);
      xs.start(v.data(), n, residual, background, &h);
      std::vector<CrossSiteSum::Header> got;
      xs.finish(v.data(), &got);
      const auto y = host(v);
      ok = ok && got.size() == std::size_t(P);
      for (int s = 0; ok && s < P; ++s)
        ok = got[std::size_t(s)].weight == float(s + 1) && got[std::size_t(s)].value == 10.0f * float(s) &&
             got[std::size_t(s)].total == 100.0f + float(s);
      double worst = 0;
      for (std::size_t i = 0; i < n; ++i) {
        double want = 0;
        for (int s = 0; s < P; ++s) want += (s + 1) * double(value(i, s)) / wsum;
        const double err = std::fabs(y[i] - want);
        worst = std::max(worst, std::isfinite(err) ? err : 1e30);
      }
      // none: fp32 rounding; int8: half a step of each site's largest value, weighted
      const double bound = c == kernels::Compression::none ? 1e-5 : amax / 254.0 * 1.0001 + 1e-6;
      CAPTURE(int(c), background, worst);
      ok = ok && worst <= bound;
      // bytes: every rank's encoding plus a 12-byte header to the P - 1 other sites
      ok = ok && xs.bytes_sent() == std::uint64_t(P - 1) * (kernels::compressed_bytes(c, n) + 12);
    }
  }
  REQUIRE(all_ranks(ok));
}

TEST_CASE("cross-site compression stays within its error bound and error feedback cancels it", "[case_coll_compress][skip_np1][mpi][collectives][sites]") {
  const auto world = Comm::view(MPI_COMM_WORLD);
  auto flat_coll = make_collectives(Backend::mpi, world);
  const int P = flat_coll->size(), r = flat_coll->rank();
  if (P == 1) return test::skip_case("one rank is one site: nothing crosses");
  FlatReducer flat(*flat_coll, std::size_t(1) << 20);
  SiteTopology topo(world, SiteTopology::site_of(r, P, P), P);  // every rank its own site
  const std::size_t n = 1000;
  std::vector<float> x(n);
  for (std::size_t i = 0; i < n; ++i) x[i] = std::sin(0.37f * float(i) + float(r)) * (1.0f + float(i % 7));
  auto exact_v = device(x);
  flat.all_reduce_sum(exact_v.data(), n);
  const auto exact = host(exact_v);
  // per element, the sum over ranks of |x| bounds each rank's quantisation error
  std::vector<float> absx(n);
  for (std::size_t i = 0; i < n; ++i) absx[i] = std::fabs(x[i]);
  auto abs_v = device(absx);
  flat.all_reduce_sum(abs_v.data(), n);
  const auto sum_abs = host(abs_v);
  float amax = 0;
  for (float a : absx) amax = std::max(amax, a);
  MPI_Allreduce(MPI_IN_PLACE, &amax, 1, MPI_FLOAT, MPI_MAX, MPI_COMM_WORLD);
  bool ok = true;
  for (auto c : {kernels::Compression::bf16, kernels::Compression::int8}) {
    HierarchicalReducer hier(topo, Backend::mpi, *flat_coll, c);
    const int K = 64;
    std::vector<double> mean(n, 0.0);
    double first_err = 0, mean_err = 0;
    for (int k = 0; k < K; ++k) {
      auto v = device(x);
      hier.all_reduce_sum(v.data(), n);
      const auto y = host(v);
      for (std::size_t i = 0; i < n; ++i) {
        // bf16: half an ulp (2^-8 relative) per rank's value; int8: half a step (amax/254) per rank
        const double bound = c == kernels::Compression::bf16 ? sum_abs[i] * std::ldexp(1.0, -8) + 1e-6
                                                             : P * amax / 254.0 * 1.0001 + 1e-6;
        if (k == 0) {
          ok = ok && std::fabs(y[i] - exact[i]) <= bound;
          first_err = std::max(first_err, std::fabs(double(y[i]) - exact[i]));
        }
        mean[i] += y[i] / double(K);
      }
    }
    for (std::size_t i = 0; i < n; ++i) mean_err = std::max(mean_err, std::fabs(mean[i] - exact[i]));
    CAPTURE(int(c), first_err, mean_err);
    // With error feedback the errors telescope: the mean over K calls is off by at most one call's error / K.
    ok = ok && mean_err <= first_err * 2.0 / K + 1e-6;
    // bytes: every rank sent its piece's encoding to the P - 1 other sites, 64 times
    ok = ok && hier.cross_site_bytes() == std::uint64_t(K) * (P - 1) * kernels::compressed_bytes(c, n);
    REQUIRE(all_ranks(ok));
  }
}
