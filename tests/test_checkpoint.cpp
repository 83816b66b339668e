// Checkpoints under mpirun: bit-exact resume on the same layout, any-layout reload, and bad files.
#include <hdf5.h>
#include <mpi.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "catch.hpp"
#include "mpi_helpers.hpp"
#include "skip.hpp"
#include "tapestry/core/error.hpp"
#include "tapestry/io/checkpoint.hpp"
#include "tapestry/io/tokenizer.hpp"
#include "tapestry/parallel/comm.hpp"
#include "tapestry/train/checkpointing.hpp"
#include "tapestry/train/trainer.hpp"

using namespace tapestry;
using namespace tapestry::test;
namespace fs = std::filesystem;

namespace {

TrainConfig config(int global) {
  auto c = small_corpus_run();
  c.batch_size = global, c.steps = 10, c.val_every = 0, c.optim.warmup_steps = 3;
  c.val_data.clear();  // no validation here
  return c;
}

/// Resumes run `c` (which saved into `dir`) from `ckpt`, saving into dir/again, and requires the
/// loss curve from step `from` on and the final parameters to equal the full run's bit for bit.
/// Returns the resumed run's config, for refusal checks that start from it.
TrainConfig resume_bit_exact(const TrainConfig& c, const train::TrainResult& full, const fs::path& dir, const std::string& ckpt,
                             int from) {
  auto r = c;
  r.ckpt_dir = (dir / "again").string();
  r.resume = ckpt;
  const auto resumed = train_on(r, MPI_COMM_WORLD);
  REQUIRE(all_ranks(curve_diff(full, resumed, from) == 0.0));  // bitwise
  REQUIRE(all_ranks(resumed.param_checksum == full.param_checksum));
  return r;
}

/// Requires every tensor of checkpoint `ckpt` to pass its checksums and their count to be
/// `groups` times the model's tensors (model, moments, outer state, ... each one group).
void require_tensor_groups(const std::string& ckpt, const ModelConfig& m, std::size_t groups) {
  std::size_t n_reports = 0;
  bool all_ok = true;
  for (const auto& rep : io::inspect_checkpoint(ckpt, train::checkpoint_tensors(m))) ++n_reports, all_ok = all_ok && rep.ok;
  REQUIRE(all_ranks(all_ok && n_reports == train::checkpoint_tensors(m).size() * groups));
}

}  // namespace

TEST_CASE("resume on the same layout is bit-exact", "[mpi][checkpoint]") {
  const int P = world_size();
  for (int zero : {0, 1}) {
    CAPTURE(zero);
    const fs::path dir = fresh_dir("same" + std::to_string(zero));
    auto c = config(2 * P);
    c.batch_size = 2;
    c.parallel.zero = zero;
    c.save_every = 5;
    c.keep = 0;
    c.ckpt_dir = dir.string();
    const auto full = train_on(c, MPI_COMM_WORLD);
    REQUIRE(all_ranks(fs::exists(dir / "step_00000005.h5") && fs::exists(dir / "step_00000010.h5")));
    resume_bit_exact(c, full, dir, (dir / "step_00000005.h5").string(), 5);
  }
}

TEST_CASE("resume of a shuffled mixture is bit-exact: the loader's position is in the checkpoint", "[mpi][checkpoint][mixture]") {
  const int P = world_size();
  const fs::path dir = fresh_dir("mixture");
  auto c = config(2 * P);
  c.batch_size = 2;
  c.grad_accum = 2;
  c.train_data = "0.6 " + corpus().train_path + " 0.4 " + corpus().val_path;
  c.shuffle = true;
  c.save_every = 4;
  c.keep = 0;
  c.ckpt_dir = dir.string();
  const auto full = train_on(c, MPI_COMM_WORLD);
  const auto r = resume_bit_exact(c, full, dir, (dir / "step_00000004.h5").string(), 4);
  // The position belongs to this order: the same checkpoint read in order is refused.
  auto seq = r;
  seq.train_data = corpus().train_path;
  seq.shuffle = false;
  REQUIRE(all_ranks(refused_with(seq, "mixture or shuffled run")));
}

TEST_CASE("Streaming DiLoCo: a save with a fragment in flight and int4 residuals resumes bit-exact", "[case_ckpt_streaming][skip_np1][mpi][checkpoint][diloco]") {
  const int P = world_size();
  if (P % 2 != 0) return skip_case("two sites need an even rank count");
  const fs::path dir = fresh_dir("streaming");
  auto c = config(2 * P);
  c.batch_size = 2, c.parallel.sites = 2, c.parallel.outer_steps = 4, c.parallel.outer_fragments = 2;
  c.parallel.outer_delay = 1, c.parallel.compress = "int4";
  c.save_every = 6, c.keep = 0, c.ckpt_dir = dir.string();  // fragment 1 is sent after step 6, merged after 7
  const auto full = train_on(c, MPI_COMM_WORLD);
  const std::string ck = (dir / "step_00000006.h5").string();
  const auto st = io::read_checkpoint_state(ck);
  REQUIRE(all_ranks(st.outer_pending_step == 6 && st.outer_residual && st.outer_fragments == 2 && st.outer_delay == 1));
  require_tensor_groups(ck, c.model, 3 + 3 + 2 + 1 + 2);  // model + moments of 2 sites, outer model + momentum, pending, 2 residuals
  const auto r = resume_bit_exact(c, full, dir, ck, 6);
  // The fragment in flight belongs to the schedule it was sent under.
  auto w = r;
  w.parallel.outer_fragments = 1;
  REQUIRE(all_ranks(refused_with(w, "resume it with the same two")));
}

TEST_CASE("DiLoCo: resume mid-round is bit-exact; every site's state is in the file", "[mpi][checkpoint][diloco]") {
  const int P = world_size();
  const int sites = P % 2 == 0 ? 2 : 1;
  for (int zero : {0, 1}) {
    CAPTURE(zero);
    const fs::path dir = fresh_dir("diloco" + std::to_string(zero));
    auto c = config(2 * P);
    c.batch_size = 2, c.parallel.zero = zero, c.parallel.sites = sites, c.parallel.outer_steps = 3;
    c.save_every = 5, c.keep = 0, c.ckpt_dir = dir.string();  // step 5: in the middle of a round
    const auto full = train_on(c, MPI_COMM_WORLD);
    const std::string ck = (dir / "step_00000005.h5").string();
    const auto st = io::read_checkpoint_state(ck);
    REQUIRE(all_ranks(st.diloco_sites == sites && st.outer_steps == 3));
    require_tensor_groups(ck, c.model, 3 + 3 * std::size_t(sites - 1) + 2);
    const auto r = resume_bit_exact(c, full, dir, ck, 5);
    // A DiLoCo checkpoint needs the same number of sites.
    if (sites == 2) {
      auto w = r;
      w.parallel.sites = 1;
      REQUIRE(all_ranks(refused_with(w, "DiLoCo state of 2 sites but this run has 1")));
    }
  }
}

TEST_CASE("a checkpoint reloads on another layout", "[mpi][checkpoint]") {
  const int P = world_size();
  // Tolerance: a layout change reorders fp32 gradient sums (see test_dp: <= 1.2e-8 measured);
  // 1e-6 relative.
  constexpr double tol = 1e-6;
  const fs::path dir = fresh_dir("layout");
  // Saved on dp = P with ZeRO-1, resumed on one rank without ZeRO.
  auto c = config(2 * P);
  c.batch_size = 2, c.parallel.zero = 1, c.save_every = 5, c.keep = 0, c.ckpt_dir = (dir / "dp").string();
  const auto full = train_on(c, MPI_COMM_WORLD);
  auto single = config(2 * P);
  single.resume = (dir / "dp" / "step_00000005.h5").string();
  single.ckpt_dir = (dir / ("single_resumed_" + std::to_string(world_rank()))).string();
  const auto resumed1 = train_on(single, MPI_COMM_SELF);
  double d1 = curve_diff(full, resumed1, 5);
  CAPTURE(d1);
  REQUIRE(all_ranks(d1 <= tol));
  // Saved on one rank (rank 0 writes it), resumed on dp = P with ZeRO-1.
  if (world_rank() == 0) {
    auto s = config(2 * P);
    s.save_every = 5, s.keep = 0, s.ckpt_dir = (dir / "single").string();
    train_on(s, MPI_COMM_SELF);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  auto r = c;
  r.ckpt_dir = (dir / "dp_resumed").string();
  r.resume = (dir / "single" / "step_00000005.h5").string();
  const auto resumed2 = train_on(r, MPI_COMM_WORLD);
  double d2 = curve_diff(full, resumed2, 5);
  CAPTURE(d2);
  REQUIRE(all_ranks(d2 <= tol));
}

TEST_CASE("keep K, latest, and resume auto", "[mpi][checkpoint]") {
  const fs::path dir = fresh_dir("keep");
  auto c = config(2 * world_size());
  c.batch_size = 2, c.save_every = 2, c.keep = 2, c.ckpt_dir = dir.string(), c.steps = 7;
  train_on(c, MPI_COMM_WORLD);
  std::ifstream latest(dir / "latest");
  std::string name;
  std::getline(latest, name);
  const bool files = fs::exists(dir / "step_00000006.h5") && fs::exists(dir / "step_00000007.h5") &&
                     !fs::exists(dir / "step_00000004.h5") && !fs::exists(dir / "step_00000002.h5");
  REQUIRE(all_ranks(files && name == "step_00000007.h5"));
  c.steps = 9, c.resume = "auto";
  const auto more = train_on(c, MPI_COMM_WORLD);
  REQUIRE(all_ranks(more.steps.size() == 2 && more.steps.front().step == 8));
  // auto with no checkpoint starts fresh
  auto fresh = config(2 * world_size());
  fresh.batch_size = 2, fresh.resume = "auto", fresh.ckpt_dir = (dir / "none").string(), fresh.steps = 1;
  REQUIRE(all_ranks(train_on(fresh, MPI_COMM_WORLD).steps.size() == 1));
}

TEST_CASE("bad checkpoint files are one clear error each", "[checkpoint][bad-input]") {
  const fs::path dir = fresh_dir("bad");
  auto c = config(2);
  c.save_every = 2, c.steps = 2, c.ckpt_dir = (dir / std::to_string(world_rank())).string();
  train_on(c, MPI_COMM_SELF);
  const fs::path good = fs::path(c.ckpt_dir) / "step_00000002.h5", d = c.ckpt_dir;
  const auto tensors = train::checkpoint_tensors(c.model);
  std::ostringstream sink;
  REQUIRE_NOTHROW(train::ckpt_verify(good.string(), sink));

  std::string bytes;
  {
    std::ifstream f(good, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  auto write = [&](const std::string& name, const std::string& b) {
    std::ofstream(d / name, std::ios::binary) << b;
    return (d / name).string();
  };
  // truncated
  const auto cut = write("cut.h5", bytes.substr(0, bytes.size() / 2));
  REQUIRE_THROWS_WITH(io::read_checkpoint_state(cut), Catch::Matchers::Contains("cut.h5"));
  // not a checkpoint at all
  const auto text = write("text.h5", "hello, I am not HDF5\n");
  REQUIRE_THROWS_WITH(io::read_checkpoint_state(text), Catch::Matchers::Contains("is not an HDF5 file"));
  REQUIRE_THROWS_WITH(io::read_checkpoint_state((d / "missing.h5").string()), Catch::Matchers::Contains("cannot open checkpoint"));
  // corrupted tensor data: find the first values of the token embedding in the file and flip them
  float head[4];
  {
    hid_t f = H5Fopen(good.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t ds = H5Dopen2(f, "/model/embedding/token/weight", H5P_DEFAULT);
    hid_t space = H5Dget_space(ds);
    hsize_t start[2] = {0, 0}, count[2] = {1, 4}, four = 4;
    H5Sselect_hyperslab(space, H5S_SELECT_SET, start, nullptr, count, nullptr);
    hid_t mem = H5Screate_simple(1, &four, nullptr);
    H5Dread(ds, H5T_NATIVE_FLOAT, mem, space, H5P_DEFAULT, head);
    H5Sclose(mem), H5Sclose(space), H5Dclose(ds), H5Fclose(f);
  }
  const std::size_t at = bytes.find(std::string(reinterpret_cast<const char*>(head), sizeof(head)));
  REQUIRE(at != std::string::npos);
  std::string bad = bytes;
  for (std::size_t i = at; i < at + sizeof(head); ++i) bad[i] = char(~bad[i]);
  const auto flipped = write("flipped.h5", bad);
  REQUIRE_THROWS_WITH(io::read_checkpoint_tensors(flipped, tensors, std::vector<float>(c.model.num_parameters()).data(),
                                                  std::size_t(c.model.num_parameters()), nullptr, nullptr, 0, 0),
                      Catch::Matchers::Contains("tensor /model/embedding/token/weight is corrupted"));
  REQUIRE_THROWS_WITH(train::ckpt_verify(flipped, sink), Catch::Matchers::Contains("failed verification"));
  // unknown format version and an incomplete write (attribute rewritten with HDF5)
  auto set_attr = [&](const std::string& name, const char* attr, std::int64_t v) {
    const auto p = write(name, bytes);
    hid_t f = H5Fopen(p.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t a = H5Aopen(f, attr, H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_INT64, &v);
    H5Aclose(a);
    H5Fclose(f);
    return p;
  };
  REQUIRE_THROWS_WITH(io::read_checkpoint_state(set_attr("v99.h5", "format_version", 99)),
                      Catch::Matchers::Contains("has format version 99; this program reads versions 1 and 2"));
  REQUIRE_THROWS_WITH(io::read_checkpoint_state(set_attr("partial.h5", "complete", 0)),
                      Catch::Matchers::Contains("is incomplete"));
  // a model that does not match the run
  auto other = config(2);
  other.model.d_model = 64, other.model.n_head = 4;
  other.resume = good.string();
  other.ckpt_dir = (d / "other").string();
  REQUIRE_THROWS_WITH(train_on(other, MPI_COMM_SELF), Catch::Matchers::Contains("holds model L=2 H=2 C=32"));
}
