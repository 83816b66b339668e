// The Llama family under every layout: a small Llama-style model (RMSNorm, RoPE, 8 query heads on
// 4 kv heads, QK-norm, SwiGLU, untied output layer, no biases) and an Apertus-like one (xIELU)
// must give the single-rank losses step for step at dp, ZeRO-1, tp 2 and 4 (grouped-query heads
// split, or replicated when tp > n_kv_head), sequence parallelism, pp 2 and tp x pp x dp =
// 2 x 2 x 2, and across sites; a checkpoint of a split run resumes on one rank. Registered at 2, 4 and 8 ranks; a layout that does not fit the rank count
// is reported as skipped.
#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>

#include "catch.hpp"
#include "mpi_helpers.hpp"
#include "skip.hpp"
#include "tapestry/core/error.hpp"
#include "tapestry/io/checkpoint.hpp"
#include "tapestry/train/checkpointing.hpp"

using namespace tapestry;
using namespace tapestry::test;
namespace fs = std::filesystem;

namespace {

/// 10 steps of a 2-layer Llama-style model, global batch 8 (4 micro-batches of 2 on one rank).
TrainConfig llama_config(const std::string& mlp) {
  auto c = small_corpus_run();
  auto& m = c.model;
  m.arch = "llama", m.norm = "rmsnorm", m.positions = "rope", m.rope_theta = 10000, m.tie_embeddings = false;
  m.bias = false, m.qk_norm = true, m.mlp = mlp;
  m.n_layer = 2, m.n_head = 8, m.n_kv_head = 4, m.d_model = 32, m.ffn_dim = 48;
  c.batch_size = 2, c.global_batch = 8, c.steps = 10, c.val_every = 5, c.optim.warmup_steps = 3;
  return c;
}

// Tolerance as for GPT-2 (test_tp, test_pp): the layouts change only the order of fp32 sums
// (row-parallel products, the vocabulary-parallel softmax, the partial QK-norm/xIELU/norm
// gradients summed over the TP group, the gradient norm's parts). A missing reduction of a
// partial gradient, a kv head given to the wrong q heads or a RoPE position off by one shows up
// at 1e-3 or more within the first steps.
constexpr double kRelTol = 1e-6;

}  // namespace

TEST_CASE("Llama family: dp and ZeRO-1 match one rank", "[case_llama_dp][mpi][llama][dp]") {
  const int P = world_size();
  for (const std::string mlp : {"swiglu", "xielu"}) {
    CAPTURE(mlp);
    const auto ref = train_on(llama_config(mlp), MPI_COMM_SELF);
    for (int zero : {0, 1}) {
      CAPTURE(zero);
      auto c = llama_config(mlp);
      c.batch_size = std::max(1, 8 / P / 2);  // two micro-batches per rank where they fit
      c.parallel.zero = zero;
      if (8 % (c.batch_size * P) != 0) {
        skip_part("dp: global batch 8 does not divide over the ranks");
        continue;
      }
      REQUIRE(all_ranks(curve_diff(ref, train_on(c, MPI_COMM_WORLD)) <= kRelTol));
    }
  }
}

TEST_CASE("Llama family: tp 2 and 4 split the grouped-query heads; sequence parallelism; tp x dp", "[case_llama_tp][mpi][llama][tp]") {
  const int P = world_size();
  for (const std::string mlp : {"swiglu", "xielu"}) {
    CAPTURE(mlp);
    const auto ref = train_on(llama_config(mlp), MPI_COMM_SELF);
    for (int tp : {2, 4}) {
      if (P % tp != 0) {
        skip_part("tp 4 needs 4 or 8 ranks");
        continue;
      }
      for (const bool sp : {false, true}) {
        CAPTURE(tp, sp);
        auto c = llama_config(mlp);
        c.parallel.sequence_parallel = sp;
        c.parallel.zero = P / tp > 1 ? 1 : 0;
        const auto run = train_on(c, MPI_COMM_WORLD, tp);
        const double worst = curve_diff(ref, run);
        CAPTURE(worst);
        REQUIRE(all_ranks(worst <= kRelTol));
        REQUIRE(all_ranks(std::abs(run.param_checksum - ref.param_checksum) <= 1e-4 * std::abs(ref.param_checksum)));
      }
    }
  }
}

TEST_CASE("Llama family: pp 2 (untied output layer on the last stage) and tp x pp x dp = 2 x 2 x 2", "[case_llama_pp][mpi][llama][pp]") {
  const int P = world_size();
  const auto ref = train_on(llama_config("swiglu"), MPI_COMM_SELF);
  if (P == 2 || P == 4) {
    REQUIRE(all_ranks(curve_diff(ref, train_on(llama_config("swiglu"), MPI_COMM_WORLD, 1, 2)) <= kRelTol));
  } else {
    skip_part("pp 2 x dp runs at 2 and 4 ranks");
  }
  if (P == 8) {
    auto c = llama_config("swiglu");
    c.parallel.zero = 1, c.parallel.sequence_parallel = true;
    REQUIRE(all_ranks(curve_diff(ref, train_on(c, MPI_COMM_WORLD, 2, 2)) <= kRelTol));
  } else {
    skip_part("tp x pp x dp = 2 x 2 x 2 needs 8 ranks");
  }
}

TEST_CASE("document masking on a shuffled mixture: dp, tp with sequence parallelism and pp match one rank", "[case_llama_docmask][mpi][llama][docmask]") {
  // Lines of the corpus are the documents (end-of-document: '\n', byte 10); the data is a 3:1
  // mixture of the two corpus files read in a shuffled order. Every layout reads the same rows
  // and masks the same way, so the losses match the single-rank run as for plain data.
  const int P = world_size();
  auto config = [] {
    auto c = llama_config("swiglu");
    c.model.doc_mask = true, c.model.eod_token = 10, c.model.eod_mask_loss = true;
    c.train_data = "3 " + c.train_data + " 1 " + c.val_data;
    c.shuffle = true;
    return c;
  };
  const auto ref = train_on(config(), MPI_COMM_SELF);
  REQUIRE(ref.steps.size() == 10);
  {
    auto c = config();
    c.batch_size = std::max(1, 8 / P / 2);
    c.parallel.zero = 1;
    REQUIRE(all_ranks(curve_diff(ref, train_on(c, MPI_COMM_WORLD)) <= kRelTol));
  }
  {
    auto c = config();
    c.parallel.sequence_parallel = true;
    REQUIRE(all_ranks(curve_diff(ref, train_on(c, MPI_COMM_WORLD, 2)) <= kRelTol));
  }
  if (P == 2 || P == 4) {
    REQUIRE(all_ranks(curve_diff(ref, train_on(config(), MPI_COMM_WORLD, 1, 2)) <= kRelTol));
  } else {
    skip_part("pp 2 x dp runs at 2 and 4 ranks");
  }
}

TEST_CASE("Llama family: a tp x pp checkpoint names its tensors and resumes on one rank", "[case_llama_ckpt][skip_np2][skip_np8][mpi][llama][checkpoint]") {
  const int P = world_size();
  if (P != 4) {
    skip_case("the tp 2 x pp 2 checkpoint runs at 4 ranks");
    return;
  }
  const fs::path dir = fresh_dir("llama_ckpt");
  auto c = llama_config("xielu");
  c.val_every = 0, c.save_every = 5, c.keep = 0, c.ckpt_dir = dir.string();
  const auto full = train_on(c, MPI_COMM_WORLD, 2, 2);
  auto s = llama_config("xielu");
  s.val_every = 0, s.resume = (dir / "step_00000005.h5").string();
  s.ckpt_dir = (dir / ("single_" + std::to_string(world_rank()))).string();
  const auto single = train_on(s, MPI_COMM_SELF);
  REQUIRE(all_ranks(curve_diff(full, single, 5) <= kRelTol));
  // resuming with another spec is one clear error
  auto other = s;
  other.model.mlp = "swiglu";
  bool refused = false;
  try {
    train_on(other, MPI_COMM_SELF);
  } catch (const Error& e) {
    refused = std::string(e.what()).find("holds model") != std::string::npos;
  }
  REQUIRE(all_ranks(refused));
}

TEST_CASE("kv heads replicated over TP ranks (tp > n_kv_head) match one rank", "[case_llama_gqa][mpi][llama][tp][gqa]") {
  const int P = world_size();
  for (const auto& [tp, kv] : {std::pair{2, 1}, std::pair{4, 2}, std::pair{4, 1}}) {
    if (P % tp != 0) {
      skip_part("tp 4 needs 4 or 8 ranks");
      continue;
    }
    auto c = llama_config("swiglu");
    c.model.n_kv_head = kv;
    const auto ref = train_on(c, MPI_COMM_SELF);
    for (const bool sp : {false, true}) {
      CAPTURE(tp, kv, sp);
      c.parallel.sequence_parallel = sp;
      c.parallel.zero = P / tp > 1 ? 1 : 0;
      const auto run = train_on(c, MPI_COMM_WORLD, tp);
      REQUIRE(all_ranks(curve_diff(ref, run) <= kRelTol));
      REQUIRE(all_ranks(std::abs(run.param_checksum - ref.param_checksum) <= 1e-4 * std::abs(ref.param_checksum)));
    }
    // the checkpoint holds each replicated kv head once: it resumes on one rank
    const fs::path dir = fresh_dir("llama_kv_rep_" + std::to_string(tp) + "_" + std::to_string(kv));
    auto save = c;
    save.parallel.sequence_parallel = false, save.val_every = 0, save.save_every = 5, save.keep = 0;
    save.ckpt_dir = dir.string();
    const auto full = train_on(save, MPI_COMM_WORLD, tp);
    auto one = c;
    one.parallel = ParallelConfig{}, one.val_every = 0, one.resume = (dir / "step_00000005.h5").string();
    one.ckpt_dir = (dir / ("single_" + std::to_string(world_rank()))).string();
    REQUIRE(all_ranks(curve_diff(full, train_on(one, MPI_COMM_SELF), 5) <= kRelTol));
  }
}

TEST_CASE("kv heads and tp that do not divide one another are one clear error", "[case_llama_kv_bad][mpi][llama][bad-input]") {
  const int P = world_size();
  if (P % 2 != 0) {
    skip_case("needs tp 2");
    return;
  }
  auto c = llama_config("swiglu");
  c.model.n_head = 6, c.model.n_kv_head = 3, c.model.d_model = 48;
  bool refused = false;
  try {
    train_on(c, MPI_COMM_WORLD, 2);
  } catch (const Error& e) {  // rank 0 names the problem; the others learn that a peer failed
    refused = world_rank() == 0 && std::string(e.what()).find("n_kv_head (3) and tp (2) must divide one another") != std::string::npos;
  } catch (const parallel::PeerError&) {
    refused = world_rank() != 0;
  }
  REQUIRE(all_ranks(refused));
}

TEST_CASE("Llama family across sites with tp 2 or pp 2 inside each: the hierarchical reduction matches one rank", "[case_llama_sites][skip_np2][mpi][llama][sites]") {
  const int P = world_size();
  if (P != 4 && P != 8) {
    skip_case("two sites of tp 2 or pp 2 run at 4 and 8 ranks");
    return;
  }
  const auto ref = train_on(llama_config("swiglu"), MPI_COMM_SELF);
  for (const int split : {0, 1}) {  // 0: tp 2, 1: pp 2
    CAPTURE(split);
    auto c = llama_config("swiglu");
    c.batch_size = 16 / P;  // global batch 8 over dp = P / 2
    c.parallel.sites = 2, c.parallel.grad_reduce = "hierarchical", c.parallel.compress = "none";
    c.parallel.zero = 1;
    const auto run = split == 0 ? train_on(c, MPI_COMM_WORLD, 2, 1) : train_on(c, MPI_COMM_WORLD, 1, 2);
    REQUIRE(all_ranks(curve_diff(ref, run) <= kRelTol));
  }
}

TEST_CASE("Llama family across sites: hierarchical reduction matches one rank; DiLoCo sites meet", "[case_llama_diloco][skip_np8][mpi][llama][diloco]") {
  const int P = world_size();
  if (P % 2 != 0 || P > 4) {
    skip_case("two sites of dp ranks run at 2 and 4 ranks");
    return;
  }
  const auto ref = train_on(llama_config("xielu"), MPI_COMM_SELF);
  auto c = llama_config("xielu");
  c.batch_size = 8 / P;  // one micro-batch per rank
  c.parallel.sites = 2, c.parallel.grad_reduce = "hierarchical";
  REQUIRE(all_ranks(curve_diff(ref, train_on(c, MPI_COMM_WORLD)) <= kRelTol));
  // DiLoCo, H = 5 over the 10 steps: the run ends on an outer step, so every rank holds the same
  // parameters, and the sites trained apart in between (their losses differ from plain DP's).
  c.parallel.grad_reduce = "flat", c.parallel.outer_steps = 5, c.parallel.compress = "int8";
  const auto d = train_on(c, MPI_COMM_WORLD);
  REQUIRE(same_params_everywhere(d));
  REQUIRE(all_ranks(d.steps.size() == 10 && d.steps[2].loss != ref.steps[2].loss && std::isfinite(d.steps.back().loss)));
}

TEST_CASE("DiLoCo with tp 2 or pp 2 inside each of 2 sites: sites meet; resume mid-round is bit-exact", "[case_llama_diloco_split][skip_np2][mpi][llama][diloco][checkpoint]") {
  const int P = world_size();
  if (P != 4 && P != 8) {
    skip_case("two sites of tp 2 or pp 2 run at 4 and 8 ranks");
    return;
  }
  const auto ref = train_on(llama_config("swiglu"), MPI_COMM_SELF);
  for (const int split : {0, 1}) {  // 0: tp 2, 1: pp 2
    for (const int zero : {0, 1}) {
      CAPTURE(split, zero);
      const int tp = split == 0 ? 2 : 1, pp = split == 1 ? 2 : 1;
      const fs::path dir = fresh_dir("llama_diloco_split" + std::to_string(split) + "_zero" + std::to_string(zero));
      auto c = llama_config("swiglu");
      c.batch_size = 16 / P;  // global batch 8 over dp = P / 2
      c.val_every = 0, c.steps = 9, c.parallel.sites = 2, c.parallel.outer_steps = 3, c.parallel.zero = zero;
      c.save_every = 4, c.keep = 0, c.ckpt_dir = dir.string();  // step 4: in the middle of a round
      const auto full = train_on(c, MPI_COMM_WORLD, tp, pp);
      // Step 9 ends an outer step: every rank of every site holds the same model; the sites
      // trained apart in between.
      REQUIRE(same_params_everywhere(full));
      REQUIRE(all_ranks(full.steps.size() == 9 && full.steps[1].loss != ref.steps[1].loss));
      // The file holds both sites' inner state and the outer state, every tensor whole and intact.
      const std::string ck = (dir / "step_00000004.h5").string();
      const auto tensors = train::checkpoint_tensors(c.model);
      std::size_t n_reports = 0;
      bool all_ok = true;
      for (const auto& rep : io::inspect_checkpoint(ck, tensors)) ++n_reports, all_ok = all_ok && rep.ok;
      REQUIRE(all_ranks(all_ok && n_reports == tensors.size() * (3 + 3 + 2)));
      auto r = c;
      r.ckpt_dir = (dir / "again").string();
      r.resume = ck;
      const auto resumed = train_on(r, MPI_COMM_WORLD, tp, pp);
      REQUIRE(all_ranks(curve_diff(full, resumed, 4) == 0.0));  // bitwise
      REQUIRE(all_ranks(resumed.param_checksum == full.param_checksum));
    }
  }
}
