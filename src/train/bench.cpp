#include "tapestry/train/bench.hpp"

#include <algorithm>
#include <chrono>
#include <map>
#include <cstdio>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "tapestry/core/error.hpp"
#include "tapestry/io/token_file.hpp"
#include "tapestry/kernels/blas.hpp"
#include "tapestry/kernels/optim.hpp"
#include "tapestry/model/gpt.hpp"
#include "tapestry/model/memory.hpp"
#include "tapestry/optim/adamw.hpp"
#include "tapestry/parallel/collectives.hpp"
#include "tapestry/parallel/grad_reducer.hpp"
#include "tapestry/io/checkpoint.hpp"
#include "tapestry/train/checkpointing.hpp"
#include <filesystem>
#include "text.hpp"
#include "tp_group.hpp"
#include "mfu.hpp"
#include "tapestry/parallel/comm.hpp"

namespace tapestry::train {

namespace {
using detail::Clock;
using detail::fmt;
using detail::since;
/// Peak resident set of this process (VmHWM), MiB; 0 where /proc is missing.
double peak_rss_mib() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  return 0;
}

/// Wall time per Kokkos kernel name, through Kokkos's tools callbacks: each kernel is fenced
/// before and after, so the step is slower while it runs; it shows where the time goes. (cuBLAS
/// calls are not Kokkos kernels: the BLAS share is timed separately.)
class KernelTimes {
 public:
  explicit KernelTimes(bool on) : on_(on) {
    if (!on_) return;
    self_ = this;
    namespace kt = Kokkos::Tools::Experimental;
    kt::set_begin_parallel_for_callback(&begin), kt::set_end_parallel_for_callback(&end);
    kt::set_begin_parallel_reduce_callback(&begin), kt::set_end_parallel_reduce_callback(&end);
    kt::set_begin_parallel_scan_callback(&begin), kt::set_end_parallel_scan_callback(&end);
  }
  ~KernelTimes() {
    if (!on_) return;
    namespace kt = Kokkos::Tools::Experimental;
    kt::set_begin_parallel_for_callback(nullptr), kt::set_end_parallel_for_callback(nullptr);
    kt::set_begin_parallel_reduce_callback(nullptr), kt::set_end_parallel_reduce_callback(nullptr);
    kt::set_begin_parallel_scan_callback(nullptr), kt::set_end_parallel_scan_callback(nullptr);
    self_ = nullptr;
  }
  KernelTimes(const KernelTimes&) = delete;
  KernelTimes& operator=(const KernelTimes&) = delete;
  void record(bool r) { recording_ = r; }

  /// The kernels by total time, ms per step.
  void report(std::ostream& out, int steps, double step_ms) const {
    if (!on_) return;
    std::vector<std::pair<double, std::string>> rows;
    double total = 0;
    for (const auto& [name, t] : times_) rows.push_back({t.first, name}), total += t.first;
    std::sort(rows.rbegin(), rows.rend());
    out << "  Kokkos kernels (fenced each; ms per step, calls per step), " << fmt("%.1f", 1e3 * total / steps)
        << " ms in all of " << fmt("%.1f", step_ms) << " ms:\n";
    for (const auto& [s, name] : rows)
      if (1e3 * s / steps >= 0.05)
        out << "    " << fmt("%9.2f", 1e3 * s / steps) << "  " << fmt("%6.0f", double(times_.at(name).second) / steps)
            << "  " << name << "\n";
  }

 private:
  static void begin(const char* name, std::uint32_t, std::uint64_t* id) {
    if (!self_ || !self_->recording_) return;
    Kokkos::fence();
    self_->names_.push_back(name);
    *id = self_->names_.size() - 1;
    self_->start_ = Clock::now();
  }
  static void end(std::uint64_t id) {
    if (!self_ || !self_->recording_ || id >= self_->names_.size()) return;
    Kokkos::fence();
    auto& t = self_->times_[self_->names_[id]];
    t.first += since(self_->start_);
    t.second += 1;
  }
  static inline KernelTimes* self_ = nullptr;  // the callbacks are plain functions
  bool on_, recording_ = false;
  std::vector<std::string> names_;
  std::map<std::string, std::pair<double, int>> times_;
  Clock::time_point start_;
};
}  // namespace

StepBenchResult bench_step(const BenchStepConfig& cfg, const parallel::Comm& world, std::ostream& out_root) {
  validate(cfg);
  std::ofstream null_sink;
  std::ostream& out = world.rank() == 0 ? out_root : null_sink;
  const int B = cfg.batch_size, T = cfg.seq_len, P = world.size();
  std::unique_ptr<parallel::ProcessGrid> grid_owner;
  parallel::agree(world, [&] {
    grid_owner = std::make_unique<parallel::ProcessGrid>(world.get(), parallel::Layout::make(P, cfg.tp, 1));
    model::validate_tp(cfg.model, cfg.tp);
  });
  const parallel::ProcessGrid& grid = *grid_owner;
  const int dp = grid.layout().dp(), tp = cfg.tp;
  const double peak = detail::run_peak_flops(world, cfg.peak_flops);
  kernels::Blas blas(ExecSpace(), parse_precision(cfg.precision));
  detail::CollectivesTp tpg(parallel::make_collectives(parallel::parse_backend("auto"), grid.tp()), grid.tp(),
                           parallel::parse_backend("auto"));
  model::GptOptions opt;
  opt.tp = &tpg, opt.sequence_parallel = cfg.sequence_parallel;
  if (cfg.attention != "auto") opt.tiled_attention = cfg.attention == "tiled";
  opt.bf16_activations = parse_bf16_activations(cfg.activations);
  opt.bf16_attention = opt.bf16_linear_inputs = parse_precision(cfg.precision) == Precision::bf16;
  model::GPT gpt(cfg.model, B, T, std::size_t(dp), opt);
  gpt.init_random(cfg.seed);
  OptimConfig oc;
  optim::AdamW adamw(oc, gpt.tensors(), 0, gpt.padded_size());
  auto coll = parallel::make_collectives(parallel::parse_backend("auto"), grid.dp());
  require(cfg.bucket_mb > 0, "bench step: --bucket-mb must be > 0 (got " + fmt("%g", cfg.bucket_mb) + ")");
  parallel::Comm overlap_comm;  // the DP group again, for the started sums alone
  parallel::FlatReducer reducer(*coll, std::size_t(cfg.bucket_mb * (1 << 20)));
  const bool overlap = cfg.overlap_grad_reduce && dp > 1;
  if (overlap) {
    overlap_comm = grid.dp().split(0, grid.dp().rank());
    reducer.overlap(parallel::make_collectives(parallel::parse_backend("auto"), overlap_comm), gpt.padded_size(),
                    gpt.grad_pieces(reducer.max_piece()), [&gpt](std::size_t lo, std::size_t hi) { return gpt.grad_ready_after(lo, hi); },
                    nullptr);  // (no ZeRO-1 here: no parameter all-gather)
    gpt.set_layer_done([&reducer](int l) { reducer.layer_done(l); });
  }
  std::mt19937 rng(unsigned(cfg.seed) + unsigned(grid.dp().rank()));  // TP ranks share their batch
  std::uniform_int_distribution<int> tok(0, cfg.model.vocab_size - 1);
  std::vector<int> in(std::size_t(B) * T), tg(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) in[i] = tok(rng), tg[i] = tok(rng);

  StepBenchResult r;
  const auto& ex = blas.exec();
  KernelTimes kernel_times(cfg.kernel_times);
  for (int it = 0; it < cfg.warmup + cfg.iters; ++it) {
    const bool timed = it >= cfg.warmup;
    blas.set_timing(timed);
    kernel_times.record(timed);
    world.barrier();
    auto t0 = Clock::now();
    if (it == 0) {  // later steps: AdamW's fused pass zeroes the gradients and declares the weights
      gpt.zero_grad();
      blas.weights(gpt.params().data(), gpt.padded_size());
    }
    gpt.forward(blas, in, tg, 1.0);  // as the trainer: the output layer's backward runs here
    ex.fence();
    const double f = since(t0);
    auto t1 = Clock::now();
    if (overlap) reducer.begin(gpt.grads().data(), nullptr);
    gpt.backward(blas, 1.0);
    ex.fence();
    const double b = since(t1);
    auto t2 = Clock::now();
    if (overlap) reducer.finish();  // what is left: the last buckets and the wait
    else reducer.all_reduce_sum(gpt.grads().data(), gpt.padded_size());
    ex.fence();
    const double c = since(t2);
    auto t3 = Clock::now();
    const double norm = optim::grad_norm(ex, gpt.grads()) / dp;  // (this rank's part: timing only)
    optim::FusedStep fused;
    fused.zero_grads = true, fused.blas = &blas;
    adamw.step(ex, gpt.params(), gpt.grads(), 1e-4, kernels::clip_factor(norm, 1.0) / dp, fused);
    ex.fence();
    const double u = since(t3);
    if (timed) {
      r.forward_ms += 1e3 * f / cfg.iters;
      r.backward_ms += 1e3 * b / cfg.iters;
      r.comm_ms += 1e3 * c / cfg.iters;
      r.update_ms += 1e3 * u / cfg.iters;
    }
  }
  r.gemm_ms = 1e3 * blas.seconds() / cfg.iters;
  r.ms_per_step = r.forward_ms + r.backward_ms + r.comm_ms + r.update_ms;
  const double tokens = double(B) * T * dp;
  r.tokens_per_s = tokens / (r.ms_per_step / 1e3);
  r.gflops = cfg.model.flops_per_token(T) * tokens / (r.ms_per_step / 1e3) / 1e9;
  r.mfu = r.gflops * 1e9 / peak;
  r.peak_rss_mib = peak_rss_mib();
  r.model_state_mib = double(gpt.param_bytes() + adamw.state_bytes()) / (1 << 20);
  r.activation_mib = double(gpt.activation_bytes()) / (1 << 20);

  out << "# bench step: " << spec_string(cfg.model) << " B=" << B << " T=" << T << " params=" << cfg.model.num_parameters()
      << " ranks=" << P << " (tp=" << tp << (cfg.sequence_parallel && tp > 1 ? " with sequence parallelism" : "")
      << ", dp=" << dp << "; " << cfg.precision << (cfg.precision == "bf16" ? " products on " + blas.bf16_engine() : std::string())
      << (opt.bf16_activations ? ", activations stored in bf16" : "") << "; " << cfg.iters << " timed steps after " << cfg.warmup << " warm-up; rank 0's times)\n"
      << "  ms/step " << fmt("%.1f", r.ms_per_step) << "  (forward and the output layer's backward " << fmt("%.1f", r.forward_ms)
      << ", backward " << fmt("%.1f", r.backward_ms)
      << (overlap ? ", all-reduce left after backward (" + std::to_string(reducer.pieces()) + " pieces overlapped, on " + reducer.started_on() + ") "
                  : std::string(", all-reduce "))
      << fmt("%.1f", r.comm_ms)
      << ", grad-norm+AdamW " << fmt("%.1f", r.update_ms)
      << "; BLAS " << fmt("%.1f", r.gemm_ms) << " = " << fmt("%.0f", 100 * r.gemm_ms / r.ms_per_step) << "%)\n"
      << "  tokens/s " << fmt("%.0f", r.tokens_per_s) << "  GFLOP/s " << fmt("%.1f", r.gflops) << "  MFU "
      << fmt("%.1f", 100 * r.mfu) << "% of " << fmt("%.1f", peak / 1e9) << " GFLOP/s (the run's peak"
      // a CPU's bf16 dot-product instructions do twice the work of its FP32 FMAs per cycle, and the
      // default peak is the FP32 one: say what the figure is against the bf16 peak too
      << (cfg.precision == "bf16" && blas.bf16_engine().rfind("oneDNN", 0) == 0
              ? "; bf16 products here run on bf16 instructions, whose peak is twice an FP32 FMA peak: " +
                    fmt("%.1f", 50 * r.mfu) + "% of twice it"
              : std::string())
      << ")\n"
      << "  memory: peak RSS " << fmt("%.0f", r.peak_rss_mib) << " MiB; params+grads+AdamW "
      << fmt("%.0f", r.model_state_mib) << " MiB + activations " << fmt("%.0f", r.activation_mib) << " MiB = "
      << fmt("%.0f", r.model_state_mib + r.activation_mib) << " MiB\n";
  kernel_times.report(out, cfg.iters, r.ms_per_step);
  if (cfg.kernel_times) {  // and the BLAS calls by shape (fenced each, as the BLAS share above)
    std::vector<std::pair<double, std::string>> rows;
    for (const auto& [shape, t] : blas.call_times()) rows.push_back({t.seconds, shape});
    std::sort(rows.rbegin(), rows.rend());
    out << "  BLAS calls by shape (ms per step, calls per step, GFLOP/s):\n";
    for (const auto& [s, shape] : rows) {
      const auto& t = blas.call_times().at(shape);
      if (1e3 * s / cfg.iters >= 0.05)
        out << "    " << fmt("%9.2f", 1e3 * s / cfg.iters) << "  " << fmt("%6.0f", double(t.calls) / cfg.iters) << "  "
            << fmt("%9.0f", t.flops / s / 1e9) << "  " << shape << "\n";
    }
  }
  if (tp > 1) {
    // Per layer and micro-batch: 2 all-reduces of (B*T, C) floats forward (attention and MLP
    // outputs), 2 backward (their inputs' gradients); with sequence parallelism each is an
    // all-gather plus a reduce-scatter, the same bytes. A ring sends 2(tp-1)/tp of the data.
    const double per_layer = 4.0 * B * T * cfg.model.d_model * sizeof(float) * 2.0 * (tp - 1) / tp;
    out << "  TP traffic (from the shapes): " << fmt("%.2f", per_layer / 1e6) << " MB sent per rank per layer per step"
        << " (4 all-reduces of B*T*C floats, ring), " << fmt("%.1f", per_layer * cfg.model.n_layer / 1e6)
        << " MB for " << cfg.model.n_layer << " layers, plus the embedding and output layer\n";
  }
  if (!cfg.json.empty() && world.rank() == 0) {
    std::string j = "{\"n_layer\":" + std::to_string(cfg.model.n_layer) + ",\"n_head\":" + std::to_string(cfg.model.n_head) +
                    ",\"d_model\":" + std::to_string(cfg.model.d_model) + ",\"vocab_size\":" + std::to_string(cfg.model.vocab_size) +
                    ",\"spec\":\"" + spec_string(cfg.model) + "\",\"flops_per_token\":" + fmt("%.6g", cfg.model.flops_per_token(T)) +
                    ",\"batch_size\":" + std::to_string(B) + ",\"seq_len\":" + std::to_string(T) +
                    ",\"ranks\":" + std::to_string(P) + ",\"comm_ms\":" + fmt("%.3f", r.comm_ms) +
                    ",\"overlap_grad_reduce\":" + (overlap ? "true" : "false") +
                    ",\"ms_per_step\":" + fmt("%.3f", r.ms_per_step) + ",\"forward_ms\":" + fmt("%.3f", r.forward_ms) +
                    ",\"backward_ms\":" + fmt("%.3f", r.backward_ms) + ",\"update_ms\":" + fmt("%.3f", r.update_ms) +
                    ",\"blas_ms\":" + fmt("%.3f", r.gemm_ms) + ",\"tokens_per_s\":" + fmt("%.1f", r.tokens_per_s) +
                    ",\"gflops\":" + fmt("%.2f", r.gflops) + ",\"mfu\":" + fmt("%.4f", r.mfu) +
                    ",\"peak_rss_mib\":" + fmt("%.1f", r.peak_rss_mib) + ",\"model_state_mib\":" + fmt("%.1f", r.model_state_mib) +
                    ",\"activation_mib\":" + fmt("%.1f", r.activation_mib) + "}\n";
    io::write_file_atomic(cfg.json, j);
  }
  return r;
}

namespace {
/// The file system's rate for the same bytes without HDF5: every rank pwrite()s its parts at their
/// offsets in one file of the whole size (part k of rank r at k * whole + r * part floats), then
/// fsyncs it; the file is removed. Seconds from the first write to the last rank's fsync.
double raw_write(const std::string& path, const parallel::Comm& world, const std::vector<const float*>& parts,
                 std::size_t part) {
  world.barrier();
  const auto t0 = Clock::now();
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT, 0644);
  require(fd >= 0, "bench ckpt: cannot create '" + path + "': " + std::strerror(errno));
  const std::size_t bytes = part * sizeof(float), whole = bytes * std::size_t(world.size());
  bool ok = true;
  std::vector<char> staging(std::size_t(16) << 20);  // as dd: the same buffer for every write
  for (std::size_t k = 0; k < parts.size() && ok; ++k) {
    const char* p = reinterpret_cast<const char*>(parts[k]);
    const std::size_t base = k * whole + std::size_t(world.rank()) * bytes;
    for (std::size_t done = 0; done < bytes && ok;) {
      const std::size_t n = std::min(bytes - done, staging.size());
      std::memcpy(staging.data(), p + done, n);
      ok = ::pwrite(fd, staging.data(), n, off_t(base + done)) == ssize_t(n);
      done += n;
    }
  }
  ok = ok && ::fsync(fd) == 0;
  ::close(fd);
  int all = ok ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &all, 1, MPI_INT, MPI_MIN, world.get());
  const double s = since(t0);
  if (world.rank() == 0) std::filesystem::remove(path);
  require(all == 1, "bench ckpt: writing '" + path + "' failed on some rank (disk full?)");
  return s;
}
}  // namespace

void bench_ckpt(const BenchCkptConfig& cfg, const parallel::Comm& world, std::ostream& out_root) {
  validate(cfg.model);
  std::ofstream null_sink;
  std::ostream& out = world.rank() == 0 ? out_root : null_sink;
  const int P = world.size(), r = world.rank();
  model::GPT gpt(cfg.model, 1, 1, std::size_t(P));
  gpt.init_random(1);
  const std::size_t n = gpt.padded_size(), part = n / std::size_t(P), b = part * std::size_t(r);
  std::vector<float> m(part, 1e-3f), v(part, 1e-6f);
  const auto params = Kokkos::create_mirror_view_and_copy(HostSpace(), gpt.params());
  const auto tensors = checkpoint_tensors(cfg.model);
  io::CheckpointState st;
  st.model = cfg.model;
  st.dp = P, st.zero = 1, st.program_version = "bench";
  if (r == 0) std::filesystem::create_directories(cfg.dir);
  world.barrier();
  const std::string path = (std::filesystem::path(cfg.dir) / "bench.h5").string();
  const double bytes = 3.0 * double(gpt.num_params()) * 4.0;
  double wsum = 0, rsum = 0, h5sum = 0, raw_sum = 0;
  std::vector<float> back(n), mb(part), vb(part);
  const std::string raw_path = (std::filesystem::path(cfg.dir) / "bench.raw").string();
  const auto raw = [&] { raw_sum += raw_write(raw_path, world, {params.data() + b, m.data(), v.data()}, part); };
  for (int it = 0; it < cfg.iters; ++it) {
    // The raw write goes first in odd iterations, after the HDF5 write in even ones: a file
    // written just after another was deleted can reuse its pages (faster on some VMs).
    const bool raw_first = it % 2 == 0;
    if (raw_first) raw();
    world.barrier();
    auto t0 = Clock::now();
    io::write_checkpoint(path, world.get(), st, tensors,
                         {{"/model", params.data(), identity_runs(b, b + part)},
                          {"/optimizer/adam_m", m.data(), identity_runs(b, b + part, b)},
                          {"/optimizer/adam_v", v.data(), identity_runs(b, b + part, b)}});
    world.barrier();
    const double h5 = since(t0);
    if (r == 0) io::sync_file(path);  // on disk, as a training save makes it before publishing
    world.barrier();
    double w = since(t0);
    h5sum += h5;
    if (!raw_first) raw();
    t0 = Clock::now();
    io::read_checkpoint_tensors(path, tensors, back.data(), n, mb.data(), vb.data(), b, b + part);
    double rd = since(t0);
    MPI_Allreduce(MPI_IN_PLACE, &rd, 1, MPI_DOUBLE, MPI_MAX, world.get());
    wsum += w, rsum += rd;
  }
  require(std::equal(back.begin(), back.begin() + std::ptrdiff_t(gpt.num_params()), params.data()) && mb == m && vb == v,
          "bench ckpt: read back differs from what was written");
  const double w = wsum / cfg.iters, rd = rsum / cfg.iters, h5 = h5sum / cfg.iters, raw_s = raw_sum / cfg.iters;
  out << "# bench ckpt: " << gpt.num_params() << " parameters + AdamW m, v = " << fmt("%.1f", bytes / 1e6)
      << " MB of tensors, " << P << " ranks, " << cfg.iters << " iterations, file " << path << "\n"
      << "  write " << fmt("%.2f", w) << " s  " << fmt("%.2f", bytes / w / 1e9) << " GB/s   (each rank writes 1/"
      << P << ", collective MPI-IO, chunked, with chunk checksums, then fsync; HDF5 " << fmt("%.2f", h5)
      << " s, fsync " << fmt("%.2f", w - h5) << " s)\n"
      << "  raw   " << fmt("%.2f", raw_s) << " s  " << fmt("%.2f", bytes / raw_s / 1e9)
      << " GB/s   (the same bytes by pwrite + fsync, no HDF5, before and after the HDF5 writes in turn; HDF5 write at "
      << fmt("%.0f", 100.0 * raw_s / w) << "% of it)\n"
      << "  read  " << fmt("%.2f", rd) << " s  " << fmt("%.2f", bytes / rd / 1e9)
      << " GB/s of file data  (every rank reads all parameters and 1/" << P << " of m and v; slowest rank)\n";
  if (r == 0) std::filesystem::remove(path);
}

double bench_gemm(const BenchGemmConfig& cfg, std::ostream& out) {
  require(cfg.size >= 1 && cfg.iters >= 1, "bench gemm needs size >= 1 and iters >= 1");
  const int n = cfg.size;
  const Precision precision = parse_precision(cfg.precision);
  kernels::Blas blas(ExecSpace(), precision);
  View2<float> a("tapestry::bench_a", n, n), b("tapestry::bench_b", n, n), c("tapestry::bench_c", n, n);
  // Values in [-1, 1) from a multiplicative hash: tensor cores draw less power (and clock higher)
  // on constant data, so constants would overstate the rate.
  Kokkos::parallel_for(
      "tapestry::bench_gemm_fill", Kokkos::MDRangePolicy<ExecSpace, Kokkos::Rank<2>>({0, 0}, {n, n}),
      KOKKOS_LAMBDA(int i, int j) {
        const std::uint32_t h = (std::uint32_t(i) * 2654435761u) ^ (std::uint32_t(j) * 2246822519u);
        a(i, j) = float(h >> 8) / float(1u << 23) - 1.0f;
        b(j, i) = float((h * 3266489917u) >> 8) / float(1u << 23) - 1.0f;
      });
  blas.gemm<float>(false, true, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);  // warm-up
  blas.exec().fence();
  const auto t0 = Clock::now();
  for (int i = 0; i < cfg.iters; ++i)
    blas.gemm<float>(false, true, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
  blas.exec().fence();
  const double dt = since(t0) / cfg.iters;
  const double gflops = 2.0 * n * double(n) * n / dt / 1e9;
  out << "# bench gemm: " << (precision == Precision::bf16 ? "bf16 (inputs rounded per call) on " + blas.bf16_engine() : std::string("sgemm"))
      << " M=N=K=" << n << "  " << fmt("%.2f", dt * 1e3) << " ms  " << fmt("%.1f", gflops)
      << " GFLOP/s\n";
  return gflops;
}

void plan(const PlanConfig& cfg, std::ostream& out) {
  model::PlanLayout p;
  p.tp = cfg.tp, p.pp = cfg.pp, p.dp = cfg.dp, p.zero = cfg.zero, p.sequence_parallel = cfg.sequence_parallel;
  p.tiled_attention = cfg.attention == "tiled", p.batch_size = cfg.batch_size, p.seq_len = cfg.seq_len;
  p.micro_batches = cfg.micro_batches, p.pp_split = cfg.pp_split;
  p.bf16_activations = parse_bf16_activations(cfg.activations);
  require(cfg.attention == "auto" || cfg.attention == "matrix" || cfg.attention == "tiled",
          "attention must be auto, matrix or tiled (got '" + cfg.attention + "')");
  require(cfg.seq_len <= cfg.model.max_seq_len, "seq_len (" + std::to_string(cfg.seq_len) +
                                                    ") is above the model's max_seq_len (" +
                                                    std::to_string(cfg.model.max_seq_len) + ")");
  require(cfg.gpus_per_node >= 1, "gpus-per-node must be >= 1");
  p.bf16 = parse_precision(cfg.precision) == Precision::bf16;
  const auto stages = model::plan_memory(cfg.model, p);
  const double G = 1e9;
  auto gb = [&](std::int64_t b) { return fmt("%.2f", double(b) / G); };
  const std::int64_t ranks = std::int64_t(cfg.tp) * cfg.pp * cfg.dp;
  out << "# plan: " << spec_string(cfg.model) << ", " << cfg.model.num_parameters() << " parameters\n"
      << "# layout: tp=" << cfg.tp << " pp=" << cfg.pp << " dp=" << cfg.dp << " (" << ranks << " ranks)"
      << (cfg.zero ? ", ZeRO-1" : "") << (cfg.sequence_parallel && cfg.tp > 1 ? ", sequence parallel" : "")
      << "; micro-batch " << cfg.batch_size << " x " << cfg.seq_len << ", " << cfg.micro_batches
      << " micro-batches per step; attention " << (p.tiled_attention ? "tiled" : "matrix (T x T in memory)") << "\n"
      << "# fp32 parameters, gradients and AdamW" << (p.bf16 ? " (bf16: plus a bf16 copy of the weights, in 'params')" : "")
      << (p.bf16_activations ? "; activations of one micro-batch, the saved ones in bf16 (recomputed per\n"
          : p.bf16           ? "; activations of one micro-batch, fp32 but the linear layers' inputs and the\n"
                               "# attention's probabilities, kept in bf16 (recomputed per\n"
                             : "; fp32 activations of one micro-batch (recomputed per\n")
      << "# micro-batch, as the trainer does); the BLAS's bf16 operand scratch, NCCL/MPI buffers and the runtime not counted.\n"
      << "# GB = 1e9 bytes, per rank (one GPU)\n";
  out << "stage  layers   params/rank   params   grads   AdamW   activations   pipeline    total\n";
  std::int64_t worst = 0;
  std::size_t worst_stage = 0;
  for (std::size_t s = 0; s < stages.size(); ++s) {
    const auto& st = stages[s];
    char line[256];
    std::snprintf(line, sizeof(line), "%5zu  %6d  %12lld  %7s  %6s  %6s  %12s  %8s  %7s\n", s, st.layers,
                  static_cast<long long>(st.params), gb(st.param_bytes + st.bf16_weight_bytes).c_str(), gb(st.grad_bytes).c_str(),
                  gb(st.optimizer_bytes).c_str(), gb(st.activation_bytes).c_str(), gb(st.pipeline_bytes).c_str(),
                  gb(st.total()).c_str());
    out << line;
    if (st.total() > worst) worst = st.total(), worst_stage = s;
  }
  const std::int64_t ckpt = 12 * cfg.model.num_parameters();
  out << "largest rank: " << gb(worst) << " GB (stage " << worst_stage << "); a node of " << cfg.gpus_per_node
      << " ranks of that stage: " << gb(worst * cfg.gpus_per_node) << " GB\n"
      << "checkpoint: " << gb(ckpt) << " GB (parameters + AdamW m, v in fp32; HDF5 metadata aside)\n";
  if (!cfg.json.empty()) {
    std::ofstream j(cfg.json);
    require(bool(j), "cannot write '" + cfg.json + "'");
    j << "{\"parameters\":" << cfg.model.num_parameters() << ",\"tp\":" << cfg.tp << ",\"pp\":" << cfg.pp
      << ",\"dp\":" << cfg.dp << ",\"zero\":" << cfg.zero << ",\"batch_size\":" << cfg.batch_size
      << ",\"seq_len\":" << cfg.seq_len << ",\"micro_batches\":" << cfg.micro_batches
      << ",\"checkpoint_bytes\":" << ckpt << ",\"stages\":[";
    for (std::size_t s = 0; s < stages.size(); ++s) {
      const auto& st = stages[s];
      j << (s ? "," : "") << "{\"layers\":" << st.layers << ",\"params\":" << st.params
        << ",\"param_bytes\":" << st.param_bytes << ",\"grad_bytes\":" << st.grad_bytes
        << ",\"optimizer_bytes\":" << st.optimizer_bytes << ",\"activation_bytes\":" << st.activation_bytes
        << ",\"pipeline_bytes\":" << st.pipeline_bytes << ",\"bf16_weight_bytes\":" << st.bf16_weight_bytes
        << ",\"total_bytes\":" << st.total() << "}";
    }
    j << "]}\n";
  }
}

}  // namespace tapestry::train
