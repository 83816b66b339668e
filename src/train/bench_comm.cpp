#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>

#include "tapestry/core/error.hpp"
#include "tapestry/core/views.hpp"
#include "tapestry/io/token_file.hpp"
#include "tapestry/parallel/collectives.hpp"
#include "tapestry/parallel/grad_reducer.hpp"
#include "tapestry/parallel/hierarchical.hpp"
#include "tapestry/train/bench.hpp"
#include "text.hpp"

namespace tapestry::train {

namespace {
using detail::Clock;
using detail::fmt;
using detail::since;

/// Mean seconds per call of `op` over `iters` calls after `warmup`, slowest rank.
template <class F> double time_op(F&& op, int warmup, int iters, const parallel::Comm& world) {
  for (int i = 0; i < warmup; ++i) op();
  ExecSpace().fence();
  world.barrier();
  const auto t0 = Clock::now();
  for (int i = 0; i < iters; ++i) op();
  ExecSpace().fence();
  double t = since(t0) / iters;
  MPI_Allreduce(MPI_IN_PLACE, &t, 1, MPI_DOUBLE, MPI_MAX, world.get());
  return t;
}

/// Fills buf(i) = (rank + 1) * (i % 7 + 1), runs `op` once, and counts elements (over all ranks)
/// that differ from sum_r (r + 1) * (i % 7 + 1) = P(P+1)/2 * (i % 7 + 1) by more than `tol`. All
/// values are small integers, exact in fp32 (and bf16). Not a template over `op`: nvcc rejects
/// extended (device) lambdas in a function template instantiated with a lambda type local to
/// another function.
std::int64_t count_wrong(View1<float> buf, const std::function<void()>& op, const parallel::Comm& world,
                         float tol = 0.0f) {
  const float r1 = float(world.rank() + 1);
  const float total = float(world.size() * (world.size() + 1) / 2);
  Kokkos::parallel_for(
      "tapestry::bench_fill", Kokkos::RangePolicy<ExecSpace>(0, buf.extent(0)),
      KOKKOS_LAMBDA(std::size_t i) { buf(i) = r1 * float(i % 7 + 1); });
  op();
  std::int64_t wrong = 0;
  Kokkos::parallel_reduce(
      "tapestry::bench_check", Kokkos::RangePolicy<ExecSpace>(0, buf.extent(0)),
      KOKKOS_LAMBDA(std::size_t i, std::int64_t& acc) {
        const float d = buf(i) - total * float(i % 7 + 1);
        acc += (d > tol || -d > tol) ? 1 : 0;
      },
      wrong);
  MPI_Allreduce(MPI_IN_PLACE, &wrong, 1, MPI_INT64_T, MPI_SUM, world.get());
  return wrong;
}

}  // namespace

std::vector<AllreduceRow> bench_allreduce(const BenchAllreduceConfig& cfg, const parallel::Comm& world,
                                          std::ostream& out_root) {
  validate(cfg);
  std::ofstream null_sink;
  std::ostream& out = world.rank() == 0 ? out_root : null_sink;
  const int P = world.size();
  auto coll = parallel::make_collectives(parallel::parse_backend(cfg.collectives), world);
  // The baseline: MPI_Allreduce on the same buffer (through host copies where the MPI cannot read
  // device memory).
  auto mpi_coll = parallel::make_collectives(parallel::Backend::mpi, world);
  std::unique_ptr<parallel::SiteTopology> topo;
  std::unique_ptr<parallel::GradReducer> owned;
  float tol = 0.0f;  // lossless and bf16 (small integers) are exact
  if (cfg.algo == "hierarchical") {
    topo = std::make_unique<parallel::SiteTopology>(world, parallel::SiteTopology::site_of(world.rank(), P, cfg.sites),
                                                    cfg.sites);
    const auto c = kernels::parse_compression(cfg.compress);
    owned = std::make_unique<parallel::HierarchicalReducer>(*topo, parallel::parse_backend(cfg.collectives), *coll, c);
    // int8: each site's piece is off by at most half a step, amax / 254; the sum bounds amax.
    if (c == kernels::Compression::int8) tol = 7.0f * float(P * (P + 1) / 2) * float(cfg.sites) / 254.0f * 1.001f;
  } else {
    owned = std::make_unique<parallel::FlatReducer>(*coll, std::size_t(cfg.bucket_mb * (1 << 20)));
  }
  parallel::GradReducer& reducer = *owned;
  View1<float> buf(Kokkos::view_alloc(Kokkos::WithoutInitializing, "tapestry::bench_allreduce"),
                   std::size_t(cfg.max_bytes / 4));
  const double bus = P > 1 ? 2.0 * (P - 1) / P : 0.0;

  out << "# tapestry bench allreduce: " << P << " ranks, float sum, in place; " << reducer.describe()
      << "; warmup " << cfg.warmup << ", iters " << cfg.iters << "\n"
      << "# time = slowest rank's mean per call; algbw = size/time; busbw = algbw * 2(n-1)/n;"
      << " xsite = bytes sent between sites per call, all ranks" << (tol > 0 ? "; int8: #wrong counts errors above the quantisation bound" : "") << "\n"
      << "#                          |               tapestry (" << cfg.algo << ")                        |            MPI_Allreduce\n"
      << "#      size       count    |   time(us)  algbw(GB/s) busbw(GB/s) #wrong   xsite(B) |   time(us)  algbw(GB/s) busbw(GB/s) #wrong\n";
  std::vector<AllreduceRow> rows;
  for (double b = double(cfg.min_bytes); b <= double(cfg.max_bytes) * (1 + 1e-9); b *= cfg.factor) {
    AllreduceRow row;
    row.count = std::int64_t(b) / 4;
    row.bytes = row.count * 4;
    if (!rows.empty() && rows.back().bytes == row.bytes) continue;
    View1<float> v(buf.data(), std::size_t(row.count));
    float* p = v.data();
    const std::size_t n = std::size_t(row.count);
    auto ours = [&] { reducer.all_reduce_sum(p, n); };
    auto mpi = [&] { mpi_coll->all_reduce_sum(p, n); };
    row.tapestry_wrong = count_wrong(v, ours, world, tol);
    row.mpi_wrong = count_wrong(v, mpi, world);
    Kokkos::deep_copy(v, 0.0f);  // timed calls sum zeros: no overflow, no denormals
    const std::uint64_t x0 = reducer.cross_site_bytes();
    const double t1 = time_op(ours, cfg.warmup, cfg.iters, world);
    double xsite = double(reducer.cross_site_bytes() - x0) / (cfg.warmup + cfg.iters);
    MPI_Allreduce(MPI_IN_PLACE, &xsite, 1, MPI_DOUBLE, MPI_SUM, world.get());
    row.cross_site_bytes = xsite;
    const double t2 = time_op(mpi, cfg.warmup, cfg.iters, world);
    row.tapestry_us = t1 * 1e6;
    row.tapestry_algbw = double(row.bytes) / t1 / 1e9;
    row.tapestry_busbw = row.tapestry_algbw * bus;
    row.mpi_us = t2 * 1e6;
    row.mpi_algbw = double(row.bytes) / t2 / 1e9;
    row.mpi_busbw = row.mpi_algbw * bus;
    char line[256];
    std::snprintf(line, sizeof(line), "%12lld %12lld | %10.1f %12.3f %11.3f %6lld %10.0f | %10.1f %12.3f %11.3f %6lld\n",
                  (long long)row.bytes, (long long)row.count, row.tapestry_us, row.tapestry_algbw,
                  row.tapestry_busbw, (long long)row.tapestry_wrong, row.cross_site_bytes, row.mpi_us, row.mpi_algbw,
                  row.mpi_busbw, (long long)row.mpi_wrong);
    out << line;
    out.flush();
    rows.push_back(row);
  }
  std::int64_t wrong = 0;
  for (const auto& r : rows) wrong += r.tapestry_wrong + r.mpi_wrong;
  out << "# out of bounds values: " << wrong << (wrong == 0 ? " OK" : " FAILED") << "\n";

  if (!cfg.output.empty() && world.rank() == 0) {
    const bool json = cfg.output.substr(cfg.output.rfind('.')) == ".json";
    std::string s = json ? "{\"ranks\":" + std::to_string(P) + ",\"algo\":\"" + cfg.algo + "\",\"sites\":" +
                               std::to_string(cfg.sites) + ",\"compress\":\"" + cfg.compress + "\",\"collectives\":\"" + coll->name() +
                               "\",\"bucket_mb\":" + fmt("%g", cfg.bucket_mb) + ",\"rows\":[\n"
                         : "ranks,bytes,count,tapestry_us,tapestry_algbw_gbs,tapestry_busbw_gbs,tapestry_wrong,"
                           "cross_site_bytes,mpi_us,mpi_algbw_gbs,mpi_busbw_gbs,mpi_wrong\n";
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const auto& r = rows[i];
      if (json)
        s += std::string(i ? ",\n" : "") + "{\"bytes\":" + std::to_string(r.bytes) + ",\"count\":" + std::to_string(r.count) +
             ",\"tapestry\":{\"time_us\":" + fmt("%.3f", r.tapestry_us) + ",\"algbw_gbs\":" + fmt("%.4f", r.tapestry_algbw) +
             ",\"busbw_gbs\":" + fmt("%.4f", r.tapestry_busbw) + ",\"wrong\":" + std::to_string(r.tapestry_wrong) +
             ",\"cross_site_bytes\":" + fmt("%.0f", r.cross_site_bytes) +
             "},\"mpi\":{\"time_us\":" + fmt("%.3f", r.mpi_us) + ",\"algbw_gbs\":" + fmt("%.4f", r.mpi_algbw) +
             ",\"busbw_gbs\":" + fmt("%.4f", r.mpi_busbw) + ",\"wrong\":" + std::to_string(r.mpi_wrong) + "}}";
      else
        s += std::to_string(P) + "," + std::to_string(r.bytes) + "," + std::to_string(r.count) + "," +
             fmt("%.3f", r.tapestry_us) + "," + fmt("%.4f", r.tapestry_algbw) + "," + fmt("%.4f", r.tapestry_busbw) +
             "," + std::to_string(r.tapestry_wrong) + "," + fmt("%.0f", r.cross_site_bytes) + "," +
             fmt("%.3f", r.mpi_us) + "," + fmt("%.4f", r.mpi_algbw) +
             "," + fmt("%.4f", r.mpi_busbw) + "," + std::to_string(r.mpi_wrong) + "\n";
    }
    if (json) s += "\n]}\n";
    io::write_file_atomic(cfg.output, s);
    out << "# wrote " << cfg.output << "\n";
  }
  require(wrong == 0, "bench allreduce: " + std::to_string(wrong) + " wrong values");
  return rows;
}

}  // namespace tapestry::train
