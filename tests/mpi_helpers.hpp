#pragma once
// Helpers shared by the tests that run under mpirun.
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <cstdio>
#include <filesystem>
#include <string>

#include <sstream>

#include "tapestry/core/error.hpp"
#include "tapestry/io/data_prepare.hpp"
#include "tapestry/parallel/comm.hpp"
#include "tapestry/train/trainer.hpp"

namespace tapestry::test {

inline int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

inline int world_size() {
  int s = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

/// True on every rank iff `ok` on every rank: a check that fails on one rank fails everywhere,
/// and no rank goes on to a collective the others skip.
inline bool all_ranks(bool ok) {
  int v = ok ? 1 : 0, all = 0;
  MPI_Allreduce(&v, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all == 1;
}

/// A fresh directory shared by all ranks (made by rank 0), named per test and rank count.
inline std::filesystem::path fresh_dir(const std::string& name) {
  namespace fs = std::filesystem;
  const fs::path d = fs::temp_directory_path() / ("tapestry_test_np" + std::to_string(world_size()) + "_" + name);
  if (world_rank() == 0) {
    fs::remove_all(d);
    fs::create_directories(d);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  return d;
}

/// The embedded corpus as token files, written once by rank 0.
inline const io::PrepareResult& corpus() {
  static const io::PrepareResult r = [] {
    io::PrepareConfig c;
    c.inputs = {std::string(TAPESTRY_SOURCE_DIR) + "/inputs/corpus/licenses.txt"};
    c.output_dir = fresh_dir("corpus").string();
    io::PrepareResult res;
    if (world_rank() == 0) res = io::prepare_data(c);
    MPI_Barrier(MPI_COMM_WORLD);
    res.train_path = (std::filesystem::path(c.output_dir) / "corpus_train.bin").string();
    res.val_path = (std::filesystem::path(c.output_dir) / "corpus_val.bin").string();
    return res;
  }();
  return r;
}

/// The small model the MPI tests train: 2 layers, 2 heads, C = 32, T = 32, AdamW lr 3e-3, on the
/// embedded corpus, validating on 2 batches (each test sets its steps, warm-up, batch and how
/// often it validates); no progress lines.
inline TrainConfig small_corpus_run() {
  TrainConfig c;
  c.model.n_layer = 2, c.model.n_head = 2, c.model.d_model = 32, c.model.max_seq_len = 32;
  c.seq_len = 32, c.val_batches = 2, c.log_every = 1000, c.optim.lr = 3e-3;
  c.train_data = corpus().train_path;
  c.val_data = corpus().val_path;
  return c;
}

/// Trains `c` over all ranks of `comm` (MPI_COMM_SELF: one rank), `tp`-way tensor parallel, in `pp`
/// pipeline stages, and data parallel over the rest; log discarded.
inline train::TrainResult train_on(const TrainConfig& c, MPI_Comm comm, int tp = 1, int pp = 1) {
  int n = 1;
  MPI_Comm_size(comm, &n);
  parallel::ProcessGrid grid(comm, parallel::Layout::make(n, tp, pp));
  std::ostringstream log;
  return train::run_training(c, grid, log);
}

/// True on every rank when training `c` over all ranks is refused as it should be: world rank 0
/// throws tapestry::Error naming `what`, the others learn that a peer failed.
inline bool refused_with(const TrainConfig& c, const std::string& what) {
  bool right = false;
  try {
    train_on(c, MPI_COMM_WORLD);
  } catch (const Error& e) {
    right = world_rank() == 0 && std::string(e.what()).find(what) != std::string::npos;
  } catch (const parallel::PeerError&) {
    right = world_rank() != 0;
  }
  return right;
}

/// Largest relative difference between `run` and steps from+1 ... of `ref` (a run resumed at step
/// `from`): the training losses, and with from = 0 also the gradient norms (/ 10) and the
/// validation losses. 1e9 when the runs do not line up (step counts or numbers). Rank 0 prints it.
inline double curve_diff(const train::TrainResult& ref, const train::TrainResult& run, std::size_t from = 0) {
  // NaN or inf on either side is an infinite difference (std::max would silently drop a NaN).
  auto rel = [](double a, double b) {
    return std::isfinite(a) && std::isfinite(b) ? std::abs(a - b) / std::abs(a) : std::numeric_limits<double>::infinity();
  };
  double worst = ref.steps.size() == run.steps.size() + from && (from > 0 || ref.val.size() == run.val.size()) ? 0 : 1e9;
  for (std::size_t s = 0; worst < 1e9 && s < run.steps.size(); ++s) {
    const auto &a = ref.steps[s + from], &b = run.steps[s];
    if (a.step != b.step) worst = 1e9;
    worst = std::max(worst, rel(a.loss, b.loss));
    if (from == 0) worst = std::max(worst, rel(a.grad_norm, b.grad_norm) * 0.1);
  }
  for (std::size_t s = 0; worst < 1e9 && from == 0 && s < ref.val.size(); ++s)
    worst = std::max(worst, rel(ref.val[s].loss, run.val[s].loss));
  if (world_rank() == 0) std::printf("largest relative difference to the reference run: %.3g\n", worst);
  return worst;
}

/// True on every rank iff every rank ended with the same parameters (their checksum).
inline bool same_params_everywhere(const train::TrainResult& r) {
  double lo = r.param_checksum, hi = r.param_checksum;
  MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return lo == hi;
}

}  // namespace tapestry::test
