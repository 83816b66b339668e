// validate(): each impossible setting is one clear message; the LR schedule; parameter counts.
#include "catch.hpp"
#include "tapestry/core/config.hpp"
#include "tapestry/core/error.hpp"
#include "tapestry/model/gpt.hpp"
#include "tapestry/optim/adamw.hpp"
#include "tapestry/train/outer_schedule.hpp"

using namespace tapestry;

namespace {
TrainConfig good() {
  TrainConfig c;
  c.train_data = "x.bin";
  c.val_data = "y.bin";
  return c;
}
}  // namespace

TEST_CASE("a valid config passes and each impossible one names its problem", "[config][bad-input]") {
  REQUIRE_NOTHROW(validate(good()));
  auto c = good();
  c.model.n_head = 3;
  REQUIRE_THROWS_WITH(validate(c), "n_head (3) does not divide d_model (128)");
  c = good();
  c.seq_len = 512;
  REQUIRE_THROWS_WITH(validate(c), "seq_len (512) is above the model's max_seq_len (256)");
  c = good();
  c.train_data.clear();
  REQUIRE_THROWS_WITH(validate(c), "train_data is not set");
  c = good();
  c.val_data.clear();
  REQUIRE_THROWS_WITH(validate(c), "val_every > 0 needs val_data");
  c = good();
  c.model.vocab_size = 128256;  // Llama 3's vocabulary is a valid model
  REQUIRE_NOTHROW(validate(c));
  c.model.vocab_size = (1 << 30) + 1;
  REQUIRE_THROWS_WITH(validate(c), "vocab_size must be in [2, 2^30] (got 1073741825)");
  // the model spec's keys
  c = good();
  c.model.n_kv_head = 3;
  REQUIRE_THROWS_WITH(validate(c), "n_kv_head (3) must divide n_head (4)");
  c = good();
  c.model.norm = "batchnorm";
  REQUIRE_THROWS_WITH(validate(c), "norm must be layernorm or rmsnorm (got 'batchnorm')");
  c = good();
  c.model.mlp = "relu";
  REQUIRE_THROWS_WITH(validate(c), "mlp must be gelu, swiglu or xielu (got 'relu')");
  c = good();
  c.model.positions = "rope", c.model.n_head = 128;  // head_dim 1
  REQUIRE_THROWS_WITH(validate(c), "rope needs an even head dimension (d_model / n_head = 1)");
  c = good();
  c.model.rope_scaling = "yarn";
  REQUIRE_THROWS_WITH(validate(c), "rope_scaling must be none or llama3 (got 'yarn')");
  c = good();
  c.model.arch = "mamba";
  REQUIRE_THROWS_WITH(validate(c), "arch must be gpt2 or llama (got 'mamba')");
  c = good();
  c.model.padded_vocab_size = 100;
  REQUIRE_THROWS_WITH(validate(c), "padded_vocab_size (100) is smaller than vocab_size (256)");
  c = good();
  c.optim.beta2 = 1.0;
  REQUIRE_THROWS_WITH(validate(c), "beta2 must be in [0, 1) (got 1)");
  c = good();
  c.grad_accum = 0;
  REQUIRE_THROWS_WITH(validate(c), "grad-accum (micro-batches) must be >= 1 (got 0)");
}

TEST_CASE("Streaming DiLoCo schedule: each fragment once per round at offset p*H/P, merged tau steps later", "[config][diloco]") {
  train::OuterSchedule s;
  s.H = 10, s.fragments = 4, s.delay = 2;
  REQUIRE(s.offset(0) == 0);
  REQUIRE(s.offset(1) == 2);  // 10 / 4 = 2.5: floor
  REQUIRE(s.offset(2) == 5);
  REQUIRE(s.offset(3) == 7);
  std::vector<int> sends(4, 0), merges(4, 0);
  for (int t = 1; t <= 100; ++t) {
    const int p = s.sent_after(t), m = s.merged_after(t);
    if (p >= 0) {
      ++sends[std::size_t(p)];
      REQUIRE((t - s.offset(p)) % s.H == 0);
    }
    if (m >= 0) {
      ++merges[std::size_t(m)];
      REQUIRE(s.sent_after(t - s.delay) == m);
    }
  }
  for (int p = 0; p < 4; ++p) REQUIRE(sends[std::size_t(p)] == 10);  // once per round of 10 steps
  REQUIRE(merges == std::vector<int>{9, 10, 10, 10});  // fragment 0's send after step 100 merges after 102
  REQUIRE(s.sent_after(0) == -1);
  REQUIRE(s.merged_after(1) == -1);
  REQUIRE(s.merged_after(4) == 1);  // sent after 2
  // Fragments cover the slice exactly once, sizes within 1.
  std::size_t covered = 0;
  for (int p = 0; p < 4; ++p) {
    const auto [lo, hi] = s.range(p, 37);
    REQUIRE(lo == covered);
    REQUIRE((hi - lo == 9 || hi - lo == 10));
    covered = hi;
  }
  REQUIRE(covered == 37);
  // One fragment: today's DiLoCo (after steps H, 2H, ...).
  train::OuterSchedule one;
  one.H = 5;
  for (int t = 1; t <= 20; ++t) REQUIRE((one.sent_after(t) == 0) == (t % 5 == 0));
  // Validation: fragments in [1, H], delay in [0, H / P], mix in [0, 1).
  ParallelConfig p;
  p.outer_steps = 10, p.outer_fragments = 4, p.outer_delay = 2;
  REQUIRE_NOTHROW(validate(p));
  p.outer_delay = 3;
  REQUIRE_THROWS_WITH(validate(p), Catch::Contains("outer-delay must be in [0, outer-steps / outer-fragments = 2]"));
  p.outer_delay = 0, p.outer_fragments = 11;
  REQUIRE_THROWS_WITH(validate(p), Catch::Contains("outer-fragments must be in [1, outer-steps]"));
  p.outer_fragments = 1, p.outer_mix = 1;
  REQUIRE_THROWS_WITH(validate(p), Catch::Contains("outer-mix must be in [0, 1)"));
}

TEST_CASE("parameter count matches GPT-2 124M and the flat layout", "[config]") {
  ModelConfig m;
  m.n_layer = 12, m.n_head = 12, m.d_model = 768, m.max_seq_len = 1024, m.vocab_size = 50257;
  m.padded_vocab_size = 50304;
  REQUIRE(m.num_parameters() == 124475904);  // llm.c: "num_parameters: 124475904"
  const auto layout = model::param_layout(m);
  REQUIRE(layout.back().offset + layout.back().size == std::size_t(m.num_parameters()));
  ModelConfig d;
  REQUIRE(d.vocab_padded() == 256);
  d.vocab_size = 257;
  REQUIRE(d.vocab_padded() == 384);
}

TEST_CASE("parameter counts of the Llama-family presets: published figures and the layout agree", "[config][spec]") {
  auto llama = [](int L, int C, int H, int F, int V, const char* mlp, bool qk) {
    ModelConfig m;
    m.n_layer = L, m.d_model = C, m.n_head = H, m.n_kv_head = 8, m.ffn_dim = F, m.vocab_size = V;
    m.max_seq_len = 131072, m.norm = "rmsnorm", m.positions = "rope", m.mlp = mlp, m.qk_norm = qk;
    m.tie_embeddings = false, m.bias = false, m.arch = "llama";
    validate(m);
    // the flat layout (no allocation) holds exactly num_parameters() elements
    const auto layout = model::param_layout(m);
    REQUIRE(layout.back().offset + layout.back().size == std::size_t(m.num_parameters()));
    return m.num_parameters();
  };
  REQUIRE(llama(32, 4096, 32, 14336, 128256, "swiglu", false) == 8030261248LL);   // Llama 3.1 8B, as published
  REQUIRE(llama(80, 8192, 64, 28672, 128256, "swiglu", false) == 70553706496LL);  // Llama 3.1 70B, as published
  REQUIRE(llama(32, 4096, 32, 21504, 131072, "xielu", true) == 8053338176LL);     // Apertus 8B
  REQUIRE(llama(80, 8192, 64, 43008, 131072, "xielu", true) == 70599864480LL);    // Apertus 70B
  // FLOPs per token: 6 x (all but the input embedding when untied) + attention
  ModelConfig m;
  m.n_layer = 2, m.d_model = 64, m.n_head = 4, m.n_kv_head = 2, m.ffn_dim = 96, m.vocab_size = 256;
  m.positions = "rope", m.tie_embeddings = false, m.norm = "rmsnorm", m.mlp = "swiglu", m.bias = false;
  const double matmul = double(m.num_parameters()) - 256.0 * 64;
  REQUIRE(m.flops_per_token(32) == Approx(6 * matmul + 12.0 * 2 * 64 * 32));
}

TEST_CASE("warmup then cosine decay to the minimum", "[config][optim]") {
  OptimConfig o;
  o.lr = 1.0, o.min_lr_ratio = 0.1, o.warmup_steps = 10;
  REQUIRE(optim::lr_at(o, 0, 100) == Approx(0.1));
  REQUIRE(optim::lr_at(o, 9, 100) == Approx(1.0));
  REQUIRE(optim::lr_at(o, 10, 100) == Approx(1.0));
  REQUIRE(optim::lr_at(o, 55, 100) == Approx(0.55));
  REQUIRE(optim::lr_at(o, 99, 100) == Approx(0.1).margin(1e-3));
  REQUIRE(optim::lr_at(o, 100, 100) == Approx(0.1));
  o.warmup_steps = 0;
  REQUIRE(optim::lr_at(o, 0, 100) == Approx(1.0));
}

TEST_CASE("pipeline stages: even split with the remainder first, explicit splits checked", "[config][pipeline]") {
  REQUIRE(stage_layers(12, 4, "") == std::vector<int>{3, 3, 3, 3});
  REQUIRE(stage_layers(10, 4, "") == std::vector<int>{3, 3, 2, 2});
  REQUIRE(stage_layers(4, 2, "3,1") == std::vector<int>{3, 1});
  REQUIRE_THROWS_WITH(stage_layers(3, 4, ""), "pipeline of 4 stages for 3 layers: every stage needs at least one layer (more stages than layers)");
  REQUIRE_THROWS_WITH(stage_layers(4, 2, "3,3"), "--pp-split '3,3' gives 2 stages and 6 layers; the run has 2 stages and n_layer = 4");
  REQUIRE_THROWS_WITH(stage_layers(4, 2, "4,0"), "--pp-split '4,0': '0' is not a layer count >= 1");
  REQUIRE_THROWS_WITH(stage_layers(4, 2, "2,x"), "--pp-split '2,x': 'x' is not a layer count >= 1");
}
