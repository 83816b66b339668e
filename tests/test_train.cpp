// The model and the training loop: gradient of the whole model against finite differences,
// gradient accumulation, determinism, llm.c round trip, and learning on the embedded corpus.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>

#include "catch.hpp"
#include "tapestry/core/error.hpp"
#include "tapestry/io/data_loader.hpp"
#include "tapestry/io/llmc_checkpoint.hpp"
#include "tapestry/io/token_file.hpp"
#include "tapestry/io/data_prepare.hpp"
#include "helpers.hpp"
#include "tapestry/kernels/bf16.hpp"
#include "tapestry/kernels/blas.hpp"
#include "tapestry/kernels/optim.hpp"
#include "tapestry/model/gpt.hpp"
#include "tapestry/model/memory.hpp"
#include "tapestry/optim/adamw.hpp"
#include "tapestry/parallel/comm.hpp"
#include "tapestry/train/trainer.hpp"

using namespace tapestry;
namespace fs = std::filesystem;

namespace {
ModelConfig tiny() {
  ModelConfig m;
  m.n_layer = 2, m.n_head = 2, m.d_model = 8, m.max_seq_len = 8, m.vocab_size = 11, m.padded_vocab_size = 16;
  return m;
}

std::vector<int> pattern(int n, int mod, int mul) {
  std::vector<int> v(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) v[std::size_t(i)] = (i * mul + 3) % mod;
  return v;
}

/// Token files from the embedded corpus, made once per test process.
struct Corpus {
  std::string train, val;
  Corpus() {
    const fs::path dir = fs::temp_directory_path() / "tapestry_test_corpus";
    io::PrepareConfig c;
    c.inputs = {std::string(TAPESTRY_SOURCE_DIR) + "/inputs/corpus/licenses.txt"};
    c.output_dir = dir.string();
    const auto r = io::prepare_data(c);
    train = r.train_path, val = r.val_path;
  }
};
const Corpus& corpus() {
  static const Corpus c;
  return c;
}

train::TrainResult run(const TrainConfig& c, std::ostream& log) {
  parallel::ProcessGrid grid(MPI_COMM_SELF, parallel::Layout::make(1, 1, 1));
  return train::run_training(c, grid, log);
}

TrainConfig small_run() {
  TrainConfig c;
  c.model.n_layer = 2, c.model.n_head = 2, c.model.d_model = 32, c.model.max_seq_len = 32;
  c.batch_size = 4, c.seq_len = 32, c.steps = 6, c.val_every = 0, c.log_every = 1000;
  c.optim.warmup_steps = 2;
  c.train_data = corpus().train;
  return c;
}
}  // namespace

/// The tiny model in each family and with each block option: GPT-2; Llama (RMSNorm, RoPE with
/// Llama 3 scaling, 4 query heads on 2 kv heads, QK-norm, SwiGLU, untied); Apertus-like (xIELU);
/// multi-query attention with LayerNorm without biases and RoPE.
ModelConfig tiny_spec(const std::string& which) {
  ModelConfig m = tiny();
  if (which == "gpt2") return m;
  m.n_head = 4, m.d_model = 16, m.ffn_dim = 24, m.norm_eps = 1e-5;
  m.positions = "rope", m.rope_theta = 10000, m.tie_embeddings = false, m.bias = false;
  m.norm = "rmsnorm", m.mlp = "swiglu", m.n_kv_head = 2, m.qk_norm = true;
  m.rope_scaling = "llama3", m.rope_original_context = 4, m.rope_factor = 4;  // every band at head_dim 4
  if (which == "xielu") m.mlp = "xielu";
  if (which == "mqa") m.n_kv_head = 1, m.norm = "layernorm", m.qk_norm = false, m.mlp = "gelu", m.rope_scaling = "none";
  // Document masking with RoPE restarting and the token after an end-of-document not predicted;
  // token 6 is at position 2 of the first row of the [grad] test's inputs.
  if (which == "docmask") m.doc_mask = true, m.eod_token = 6, m.eod_mask_loss = true;
  return m;
}

TEST_CASE("the whole model's gradient matches finite differences (float, sampled parameters)", "[model][grad]") {
  const std::string which = GENERATE(as<std::string>{}, "gpt2", "llama", "xielu", "mqa", "docmask");
  CAPTURE(which);
  const ModelConfig spec = tiny_spec(which);
  const int B = 2, T = 5;
  model::GPT gpt(spec, B, T);
  gpt.init_random(7);
  // Larger weights than the GPT-2 init (3x), so every path carries gradient well above float
  // noise. At 10x the logits saturate the softmax and central differences at h = 2e-3 drift (3-30%
  // off on a few wte entries, measured for the Llama specs, and 4% for GPT-2 with the
  // counter-based initialisation); at 1x and 3x every sampled entry agrees.
  auto host = gpt.params_to_host();
  const float mul = 3.0f;
  for (std::size_t i = 0; i < host.size(); ++i) host[i] *= mul;
  gpt.load_params(host);
  kernels::Blas blas;
  const auto in = pattern(B * T, 11, 7), tg = pattern(B * T, 11, 5);
  gpt.zero_grad();
  gpt.forward(blas, in, tg);
  gpt.backward(blas, 1.0);
  std::vector<float> grad(gpt.grads().extent(0));
  {
    auto g = Kokkos::create_mirror_view(gpt.grads());
    Kokkos::deep_copy(g, gpt.grads());
    std::copy(g.data(), g.data() + g.size(), grad.begin());
  }
  const float h = 2e-3f;  // small: some logits sit near softmax saturation (the loss curves sharply there)
  int checked = 0;
  for (const auto& t : gpt.tensors()) {
    for (std::size_t k = 0; k < 4; ++k) {
      std::size_t i = t.offset + (k * 7919) % t.size;
      if (t.name == "wte") i = t.offset + std::size_t(in[k] * spec.d_model) + k;  // rows that are used
      if (t.name == "wpe") i = t.offset + k * std::size_t(spec.d_model) + k;     // positions < T
      auto central = [&](float step) {
        auto p = host;
        p[i] += step;
        gpt.load_params(p);
        const double jp = gpt.forward(blas, in, tg);
        p[i] = host[i] - step;
        gpt.load_params(p);
        const double jm = gpt.forward(blas, in, tg);
        return (jp - jm) / (2 * double(step));
      };
      // Richardson: the O(h^2) error of central differences cancels (these weights are large,
      // so the loss curves noticeably over h).
      const double fd = (4 * central(h / 2) - central(h)) / 3;
      CAPTURE(t.name, i, fd, grad[i]);
      REQUIRE(std::abs(fd - grad[i]) <= 2e-3 + 2e-2 * std::abs(fd));
      ++checked;
    }
  }
  REQUIRE(checked == 4 * int(gpt.tensors().size()));
  REQUIRE(gpt.tensors().size() == (which == "gpt2" ? 16u : which == "mqa" ? 9u : which == "xielu" ? 12u : 11u));
}

TEST_CASE("document masking: a packed sequence's documents see what they would see trained apart", "[model][docmask]") {
  // Row 0 packs document A (5 tokens), the end-of-document token 6, and document B; row 1 is B
  // alone at the start of a row, then other tokens. With doc_mask, every position of B in row 0
  // has the logits of the same position of B in row 1 (RoPE restarts, no attention to A); without
  // it they differ. Both attention kernels.
  const int B = 2, T = 12, V = 11, eod = 6;
  const std::vector<int> A = {3, 10, 2, 9, 5}, Bdoc = {1, 8, 4, 0, 7, 2};
  std::vector<int> in(std::size_t(B * T)), tg(std::size_t(B * T));
  for (std::size_t i = 0; i < A.size(); ++i) in[i] = A[i];
  in[A.size()] = eod;
  for (std::size_t i = 0; i < Bdoc.size(); ++i) in[A.size() + 1 + i] = Bdoc[i], in[std::size_t(T) + i] = Bdoc[i];
  for (std::size_t i = Bdoc.size(); i < std::size_t(T); ++i) in[std::size_t(T) + i] = int(i % 5);
  for (std::size_t i = 0; i < in.size(); ++i) tg[i] = in[(i + 1) % in.size()];
  const std::size_t off = A.size() + 1;
  for (const std::string attention : {"matrix", "tiled"}) {
    CAPTURE(attention);
    ModelConfig m = tiny_spec("llama");
    m.max_seq_len = T;
    model::GptOptions o;
    o.tiled_attention = attention == "tiled";
    model::GPT plain(m, B, T, 1, o);
    m.doc_mask = true, m.eod_token = eod;
    model::GPT masked(m, B, T, 1, o);
    plain.init_random(3);
    masked.load_params(plain.params_to_host());
    kernels::Blas blas;
    const double lp = plain.forward(blas, in, tg);
    const auto a = plain.logits(blas);
    const double lm = masked.forward(blas, in, tg);
    const auto b = masked.logits(blas);
    REQUIRE(std::isfinite(lp));
    REQUIRE(std::isfinite(lm));
    double worst = 0, unmasked = 0;
    for (std::size_t t = 0; t < Bdoc.size(); ++t)
      for (int v = 0; v < V; ++v) {
        const float packed = b[(off + t) * V + std::size_t(v)], alone = b[(std::size_t(T) + t) * V + std::size_t(v)];
        REQUIRE(std::isfinite(packed));
        worst = std::max(worst, double(std::abs(packed - alone)));
        unmasked = std::max(unmasked, double(std::abs(a[(off + t) * V + std::size_t(v)] - alone)));
      }
    REQUIRE(worst < 1e-5);
    REQUIRE(unmasked > 1e-3);  // without the mask, B sees A
    // Document A, at the start of row 0, is unchanged by the mask.
    for (std::size_t i = 0; i <= A.size() * V; ++i) REQUIRE(std::abs(a[i] - b[i]) < 1e-6);
    // eod_mask_loss drops exactly one term: the prediction from the end-of-document token.
    m.eod_mask_loss = true;
    model::GPT skip(m, B, T, 1, o);
    skip.load_params(plain.params_to_host());
    const double ls = skip.forward(blas, in, tg);
    double mx = -1e30, z = 0;
    for (int v = 0; v < V; ++v) mx = std::max(mx, double(b[A.size() * V + std::size_t(v)]));
    for (int v = 0; v < V; ++v) z += std::exp(double(b[A.size() * V + std::size_t(v)]) - mx);
    const double term = mx + std::log(z) - double(b[A.size() * V + std::size_t(tg[A.size()])]);
    REQUIRE(std::abs(ls * B * T - (lm * B * T - term)) < 1e-4);
  }
}

namespace {
/// A tensor-parallel group that only has a size and a rank: enough to build one rank's model.
class ShapeOnlyTp final : public model::TpGroup {
 public:
  ShapeOnlyTp(int size, int rank) : size_(size), rank_(rank) {}
  int size() const override { return size_; }
  int rank() const override { return rank_; }
  void all_reduce_sum(float*, std::size_t) const override { throw Error("ShapeOnlyTp: no communication"); }
  void all_gather_inplace(float*, std::size_t) const override { throw Error("ShapeOnlyTp: no communication"); }
  void reduce_scatter_sum(const float*, float*, std::size_t) const override { throw Error("ShapeOnlyTp: no communication"); }
  void all_reduce_sum_block(float*, std::size_t, int) const override { throw Error("ShapeOnlyTp: no communication"); }

 private:
  int size_, rank_;
};
}  // namespace

TEST_CASE("the memory plan's activations equal what the model allocates, for every spec and layout", "[model][plan]") {
  int checked = 0;
  for (const std::string which : {"gpt2", "llama", "xielu", "mqa"}) {
    ModelConfig m = tiny_spec(which);
    // (mqa at tp 2: the kv head is replicated on both ranks)
    m.n_layer = 4;
    for (int tp : {1, 2})
      for (bool sp : {false, true})
        for (bool tiled : {false, true})
          for (bool half : {false, true})  // saved activations in bf16
            for (bool att16 : {false, true})  // bf16 attention
              for (bool lin16 : {false, true})  // linear layers' inputs kept in bf16
                for (int stage = 0; stage < 3; ++stage) {  // whole, first of two, last of two
                  model::GptOptions o;
                  ShapeOnlyTp group(tp, tp - 1);
                  o.tp = &group, o.sequence_parallel = sp, o.tiled_attention = tiled, o.bf16_activations = half;
                  o.bf16_attention = att16, o.bf16_linear_inputs = lin16;
                  if (stage > 0) o.stage = {stage == 1 ? 0 : 2, 2, stage == 1, stage == 2};
                  model::GPT gpt(m, 2, 6, 1, o);
                  CAPTURE(which, tp, sp, tiled, half, att16, lin16, stage);
                  REQUIRE(model::activation_bytes(m, 2, 6, tp, sp, o.stage, tiled, half, att16, lin16) ==
                          gpt.activation_bytes());
                  ++checked;
                }
  }
  REQUIRE(checked == 4 * 2 * 2 * 2 * 2 * 2 * 2 * 3);
}

namespace {
/// One forward and backward of a fresh model (init seed 5, an fp32 Blas unless one is given) on
/// fixed tokens: its loss, gradient and activation bytes.
struct OnePass {
  double loss = 0;
  std::vector<float> grad;
  std::size_t bytes = 0;
};
OnePass one_pass(const ModelConfig& m, int B, int T, const model::GptOptions& o, const kernels::Blas* with = nullptr) {
  std::vector<int> in(std::size_t(B) * T), tg(std::size_t(B) * T);
  for (int i = 0; i < B * T; ++i) in[std::size_t(i)] = (7 * i + 3) % m.vocab_size, tg[std::size_t(i)] = (5 * i + 1) % m.vocab_size;
  model::GPT gpt(m, B, T, 1, o);
  gpt.init_random(5);
  const kernels::Blas fp32;
  const kernels::Blas& blas = with != nullptr ? *with : fp32;
  gpt.zero_grad();
  OnePass r;
  r.loss = gpt.forward(blas, in, tg);
  gpt.backward(blas, 1.0);
  Kokkos::fence();
  const auto h = Kokkos::create_mirror_view_and_copy(HostSpace(), gpt.grads());
  r.grad.assign(h.data(), h.data() + h.extent(0));
  r.bytes = gpt.activation_bytes();
  return r;
}
/// |a - b| / |b| in L2 over the gradients; NaN (failing every comparison) when a is not finite.
double grad_rel_l2(const OnePass& a, const OnePass& b) {
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < b.grad.size(); ++i) {
    if (!std::isfinite(a.grad[i])) return std::nan("");
    diff += double(a.grad[i] - b.grad[i]) * double(a.grad[i] - b.grad[i]);
    norm += double(b.grad[i]) * double(b.grad[i]);
  }
  return std::sqrt(diff / norm);
}
double rel(double a, double b) { return std::abs(a - b) / std::abs(b); }
}  // namespace

TEST_CASE("bf16 activation storage: the same forward, gradients within bf16 rounding, less memory", "[model][bf16_activations]") {
  // The layers compute in fp32 either way; with bf16_activations backward reads the saved tensors
  // (and the residual stream) rounded to bf16. 320 tokens against 64 vocabulary rows: the output
  // layer runs in two chunks (256 + 64 rows) either way, and the matrix attention one sequence at a
  // time. So the loss is the fp32 one (measured 2026-12-01: bitwise in all eight cases; bounded at
  // 1e-7 relative, for a BLAS that rounds one sequence's product differently from a batch's), and
  // the gradient differs by the rounding: relative L2 measured 1.8e-4 to 6.3e-4 (document masking
  // is the largest), bounded at 5e-3; nonzero.
  // xIELU and document masking (per-sequence document positions in the matrix kernel) included.
  const std::string which = GENERATE("gpt2", "llama", "xielu", "docmask");
  const bool tiled = GENERATE(false, true);
  CAPTURE(which, tiled);
  ModelConfig m = tiny_spec(which);
  m.n_layer = 4, m.padded_vocab_size = 64;
  const int B = 40, T = 8;
  REQUIRE(model::output_chunk_rows(B * T, m.d_model, m.vocab_padded()) == 256);
  model::GptOptions o;
  o.tiled_attention = tiled;
  const OnePass f32 = one_pass(m, B, T, o);
  o.bf16_activations = true;
  const OnePass half = one_pass(m, B, T, o);
  const double g = grad_rel_l2(half, f32);
  std::printf("bf16 activations (%s, %s attention): loss relative difference %.3g, gradient relative L2 difference %.3g; "
              "activations %zu -> %zu bytes\n",
              which.c_str(), tiled ? "tiled" : "matrix", rel(half.loss, f32.loss), g, f32.bytes, half.bytes);
  REQUIRE(rel(half.loss, f32.loss) <= 1e-7);  // false for NaN
  REQUIRE(g > 0);
  REQUIRE(g < 5e-3);
  REQUIRE(half.bytes < f32.bytes);
}

TEST_CASE("bf16 attention: loss and gradients within bf16 rounding of the fp32 attention, less memory", "[model][bf16_attention]") {
  // GptOptions::bf16_attention against the fp32 matrix attention (fp32 Blas elsewhere, so only the
  // attention differs), and with bf16_activations too (its probabilities written straight into
  // their bf16 copy, one sequence at a time): that forward is the bf16 attention's without them,
  // so the loss agrees to 1e-7 as in the bf16 activation test, and the gradient within its bound.
  // Measured (2026-12-01): loss within 4e-6 and gradient 7.8e-5 to 8.7e-4 of fp32 attention's.
  const std::string which = GENERATE("gpt2", "llama", "docmask");
  CAPTURE(which);
  ModelConfig m = tiny_spec(which);
  m.n_layer = 3, m.padded_vocab_size = 64, m.max_seq_len = 16;
  const int B = 6, T = 16;
  model::GptOptions o;
  const OnePass f32 = one_pass(m, B, T, o);
  o.bf16_attention = true;
  const OnePass att16 = one_pass(m, B, T, o);
  o.bf16_activations = true;
  const OnePass both = one_pass(m, B, T, o);
  const double dg = grad_rel_l2(att16, f32), dg2 = grad_rel_l2(both, att16);
  std::printf("bf16 attention (%s): loss relative difference %.3g, gradient relative L2 %.3g (with bf16 activations "
              "too: loss %.3g, gradient %.3g); activations %zu -> %zu bytes\n",
              which.c_str(), rel(att16.loss, f32.loss), dg, rel(both.loss, att16.loss), dg2, f32.bytes, att16.bytes);
  REQUIRE(rel(att16.loss, f32.loss) < 1e-3);
  REQUIRE(dg > 0);
  REQUIRE(dg < 2e-2);
  REQUIRE(rel(both.loss, att16.loss) <= 1e-7);
  REQUIRE(dg2 < 5e-3);
  REQUIRE(att16.bytes < f32.bytes);
}

TEST_CASE("bf16 linear inputs kept only as the copies their products read: the same step bitwise, less memory", "[model][bf16_linear_inputs]") {
  // GptOptions::bf16_linear_inputs (what --precision bf16 sets): the norm outputs, the attention
  // output (matrix kernel) and the MLP's activation output are kept only in bf16, and the products
  // read those copies instead of rounding the floats. The copies hold what the Blas would round, so
  // the loss and every gradient must be bitwise those without the option, on both bf16 engines.
  const std::string which = GENERATE("gpt2", "llama", "xielu");
  const bool tiled = GENERATE(false, true);
  ModelConfig m = tiny_spec(which);
  m.n_layer = 3, m.padded_vocab_size = 64, m.max_seq_len = 16;
  const int B = 6, T = 16;
  for (const std::string engine : {"auto", "sgemm"}) {
    CAPTURE(which, tiled, engine);
    const auto blas = test::blas_on(engine);
    model::GptOptions o;
    o.tiled_attention = tiled, o.bf16_attention = !tiled;
    const OnePass plain = one_pass(m, B, T, o, blas.get());
    o.bf16_linear_inputs = true;
    const OnePass lin = one_pass(m, B, T, o, blas.get());
    std::printf("bf16 linear inputs (%s, %s attention, %s): activations %zu -> %zu bytes\n", which.c_str(),
                tiled ? "tiled" : "matrix", blas->bf16_engine().c_str(), plain.bytes, lin.bytes);
    REQUIRE(std::isfinite(lin.loss));
    REQUIRE(lin.loss == plain.loss);
    REQUIRE(lin.grad == plain.grad);
    REQUIRE(lin.bytes < plain.bytes);
    // with bf16_activations every tensor is a copy already: the option changes nothing
    o.bf16_activations = true;
    const OnePass stash = one_pass(m, B, T, o, blas.get());
    o.bf16_linear_inputs = false;
    const OnePass stash_plain = one_pass(m, B, T, o, blas.get());
    REQUIRE(stash.loss == stash_plain.loss);
    REQUIRE(stash.grad == stash_plain.grad);
    REQUIRE(stash.bytes == stash_plain.bytes);
  }
  // The option needs bf16 products: with fp32 ones backward would have no fp32 inputs to read.
  model::GptOptions o;
  o.bf16_linear_inputs = true;
  REQUIRE_THROWS_WITH(one_pass(m, B, T, o), Catch::Matchers::Contains("needs bf16 products"));
}

TEST_CASE("the output layer's backward run in forward() equals it run in backward()", "[model][fused_head]") {
  // forward(loss_scale) runs the output layer's backward chunk by chunk as the logits are computed
  // (what the trainer does); forward() without one leaves it to backward(), which recomputes the
  // logits. The same operations on the same values: the gradients must be bitwise equal. 320 tokens
  // against 64 vocabulary rows: two chunks (256 + 64 rows). A second micro-batch accumulates.
  const std::string which = GENERATE("gpt2", "llama");
  const bool half = GENERATE(false, true);
  CAPTURE(which, half);
  ModelConfig m = tiny_spec(which);
  m.padded_vocab_size = 64;
  const int B = 40, T = 8;
  REQUIRE(model::output_chunk_rows(B * T, m.d_model, m.vocab_padded()) == 256);
  std::vector<int> in(B * T), tg(B * T);
  for (int i = 0; i < B * T; ++i) in[std::size_t(i)] = (7 * i + 3) % m.vocab_size, tg[std::size_t(i)] = (5 * i + 1) % m.vocab_size;
  std::vector<std::vector<float>> grad(2);
  std::vector<double> loss(2);
  for (int fused = 0; fused < 2; ++fused) {
    model::GptOptions o;
    o.bf16_activations = half;
    model::GPT gpt(m, B, T, 1, o);
    gpt.init_random(5);
    kernels::Blas blas;
    gpt.zero_grad();
    for (int micro = 0; micro < 2; ++micro) {
      auto tgm = tg;
      if (micro == 1) std::rotate(tgm.begin(), tgm.begin() + 3, tgm.end());
      loss[std::size_t(fused)] += fused ? gpt.forward(blas, in, tgm, 0.5) : gpt.forward(blas, in, tgm);
      gpt.backward(blas, 0.5);
    }
    Kokkos::fence();
    const auto h = Kokkos::create_mirror_view_and_copy(HostSpace(), gpt.grads());
    grad[std::size_t(fused)].assign(h.data(), h.data() + h.extent(0));
    if (fused) {  // backward() with another scale than forward() got is refused
      gpt.forward(blas, in, tg, 0.5);
      REQUIRE_THROWS_WITH(gpt.backward(blas, 0.25), Catch::Matchers::Contains("differs from the one forward()"));
    }
  }
  REQUIRE(std::isfinite(loss[0]));
  REQUIRE(loss[1] == loss[0]);
  double norm = 0;
  for (std::size_t i = 0; i < grad[0].size(); ++i) {
    REQUIRE(grad[1][i] == grad[0][i]);  // false for NaN
    norm += double(grad[0][i]) * double(grad[0][i]);
  }
  REQUIRE(norm > 0);
}

TEST_CASE("grad_ready_after names a layer after whose backward no gradient in the range changes", "[model][overlap]") {
  // What --overlap-grad-reduce relies on: a bucket starts its sum once backward has passed the
  // layer grad_ready_after() names for it. The second micro-batch's backward snapshots the
  // gradients at each layer_done hook; every element must end equal to the snapshot taken at its
  // layer (bitwise), and a range's layer is the lowest of its elements' (-1 if any is -1).
  const std::string which = GENERATE("gpt2", "llama", "xielu");
  CAPTURE(which);
  ModelConfig m = tiny_spec(which);
  m.n_layer = 3;
  const int B = 2, T = 8;
  std::vector<int> in(B * T), tg(B * T);
  for (int i = 0; i < B * T; ++i) in[std::size_t(i)] = (7 * i + 3) % m.vocab_size, tg[std::size_t(i)] = (5 * i + 1) % m.vocab_size;
  model::GPT gpt(m, B, T);
  gpt.init_random(5);
  kernels::Blas blas;
  auto host = [&] {
    Kokkos::fence();
    const auto h = Kokkos::create_mirror_view_and_copy(HostSpace(), gpt.grads());
    return std::vector<float>(h.data(), h.data() + h.extent(0));
  };
  gpt.zero_grad();
  gpt.forward(blas, in, tg, 0.5);
  gpt.backward(blas, 0.5);
  const auto first = host();
  std::vector<std::vector<float>> at(std::size_t(m.n_layer));
  std::vector<int> order;
  gpt.set_layer_done([&](int l) {
    order.push_back(l);
    at[std::size_t(l)] = host();
  });
  std::rotate(tg.begin(), tg.begin() + 3, tg.end());
  gpt.forward(blas, in, tg, 0.5);
  gpt.backward(blas, 0.5);
  gpt.set_layer_done(nullptr);
  const auto last = host();
  REQUIRE(order == std::vector<int>{2, 1, 0});
  const std::size_t n = gpt.num_params();
  std::vector<int> ready(n);
  std::size_t early_changed = 0, per_layer[3] = {0, 0, 0};
  for (std::size_t i = 0; i < n; ++i) {
    const int r = ready[i] = gpt.grad_ready_after(i, i + 1);
    REQUIRE(r >= -1);
    REQUIRE(r < m.n_layer);
    if (r < 0) continue;
    ++per_layer[r];
    REQUIRE(last[i] == at[std::size_t(r)][i]);  // false for NaN
    if (last[i] != first[i]) ++early_changed;
  }
  CAPTURE(early_changed, per_layer[0], per_layer[1], per_layer[2]);
  REQUIRE(early_changed > n / 2);  // the check had something to catch
  for (std::size_t c : per_layer) REQUIRE(c > 0);
  REQUIRE(std::count(ready.begin(), ready.end(), -1) > 0);  // the embedding
  // grad_pieces: tiles the buffer, and cuts wherever readiness changes
  const auto pieces = gpt.grad_pieces(700);
  std::size_t end = 0;
  for (const auto& [lo, hi] : pieces) {
    REQUIRE(lo == end);
    REQUIRE(hi > lo);
    REQUIRE(hi - lo <= 700);
    end = hi;
    if (hi > n) continue;  // the padding
    for (std::size_t i = lo; i < hi; ++i) REQUIRE(ready[i] == ready[lo]);
    REQUIRE(gpt.grad_ready_after(lo, hi) == ready[lo]);
  }
  REQUIRE(end == gpt.padded_size());
  for (std::size_t lo = 0; lo < n; lo += 997) {
    const std::size_t hi = std::min(n, lo + 1500);
    int expect = m.n_layer - 1;
    for (std::size_t i = lo; i < hi; ++i) expect = ready[i] < 0 || expect < 0 ? -1 : std::min(expect, ready[i]);
    REQUIRE(gpt.grad_ready_after(lo, hi) == expect);
  }
}

TEST_CASE("the fused AdamW equals the update tensor by tensor, zeroes what it read, writes the bf16 copy", "[train][adamw]") {
  using test::randn;
  // Three tensors, the middle one over two chunks long, and padding after the last; the whole
  // buffer, and a ZeRO-1-like shard that starts and ends inside tensors.
  const std::size_t K = kernels::kAdamWChunk;
  std::vector<model::ParamTensor> ts(3);
  const std::size_t sizes[3] = {7, 2 * K + 5, 11};
  std::size_t at = 0;
  for (int i = 0; i < 3; ++i) {
    ts[std::size_t(i)].offset = at, ts[std::size_t(i)].size = sizes[i], ts[std::size_t(i)].decay = i != 1;
    at += sizes[i];
  }
  const std::size_t n = at + 9;
  OptimConfig cfg;
  cfg.beta1 = 0.8, cfg.beta2 = 0.95, cfg.eps = 1e-6, cfg.weight_decay = 0.1;
  auto floats = [](const std::vector<double>& x) {
    std::vector<float> f(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) f[i] = float(x[i]);
    return f;
  };
  auto host = [](const View1<float>& v) {
    auto h = Kokkos::create_mirror_view_and_copy(HostSpace(), v);
    return std::vector<float>(h.data(), h.data() + h.extent(0));
  };
  auto load = [](const View1<float>& v, const std::vector<float>& x) {
    Kokkos::deep_copy(v, Kokkos::View<const float*, Layout, HostSpace, Kokkos::MemoryUnmanaged>(x.data(), x.size()));
  };
  for (const auto& [begin, end] : {std::pair<std::size_t, std::size_t>{0, n}, {3, n - 14}})
    // fp32; bf16 on the build's engine (oneDNN's 16-bit words where the CPU has bf16); bf16 on the
    // rounded-float sgemm path (TAPESTRY_BF16_GEMM=sgemm: the copy holds floats)
    for (const std::string mode : {"fp32", "bf16", "bf16-sgemm"})
      for (const bool zero : {false, true}) {
        CAPTURE(begin, end, mode, zero);
        const Precision prec = mode == "fp32" ? Precision::fp32 : Precision::bf16;
        const bool sgemm = mode == "bf16-sgemm";
        const std::size_t m = end - begin;
        const std::vector<float> p0 = floats(randn(n, 11));
        const auto owned = test::blas_on(sgemm ? "sgemm" : "auto", prec);
        const kernels::Blas& blas = *owned;
        optim::AdamW adam(cfg, ts, begin, end);
        View1<float> p("p", n), g("g", m), rp("ref_p", n), rm("ref_m", m), rv("ref_v", m);
        load(p, p0), load(rp, p0);
        for (int step = 1; step <= 2; ++step) {
          const std::vector<float> g0 = floats(randn(m, std::uint64_t(20 + step)));
          load(g, g0);
          const double lr = 1e-2 * step, scale = 0.5;
          optim::FusedStep f;
          f.zero_grads = zero, f.blas = &blas;
          adam.step(ExecSpace(), p, g, lr, scale, f);
          // The reference: adamw_update over each tensor's part of [begin, end), as before the fusion.
          kernels::AdamWStep s;
          s.lr = lr, s.beta1 = cfg.beta1, s.beta2 = cfg.beta2, s.eps = cfg.eps, s.t = step, s.grad_scale = scale;
          for (const auto& t : ts) {
            const std::size_t lo = std::max(t.offset, begin), hi = std::min(t.offset + t.size, end);
            if (lo >= hi) continue;
            s.weight_decay = t.decay ? cfg.weight_decay : 0.0;
            const View1<float> gr("gr", hi - lo);
            load(gr, std::vector<float>(g0.begin() + long(lo - begin), g0.begin() + long(hi - begin)));
            kernels::adamw_update(ExecSpace(), View1<float>(rp.data() + lo, hi - lo), View1<float>(rm.data() + (lo - begin), hi - lo),
                                  View1<float>(rv.data() + (lo - begin), hi - lo), gr, s);
          }
          REQUIRE(host(p) == host(rp));  // bitwise, padding and parameters outside the shard untouched
          REQUIRE(host(adam.m()) == host(rm));
          REQUIRE(host(adam.v()) == host(rv));
          const std::vector<float> gh = host(g);
          std::size_t wrong = 0;
          for (std::size_t i = 0; i < m; ++i) {
            const bool covered = begin + i < at;  // the padding is no tensor's: never read
            wrong += gh[i] != (zero && covered ? 0.0f : g0[i]);
          }
          REQUIRE(wrong == 0);
          // The bf16 copy: each updated parameter rounded, and the products read it as written.
          const auto copy = blas.weight_copy();
          if (prec == Precision::fp32) {
            REQUIRE(copy.words == nullptr);
            REQUIRE(copy.values == nullptr);
            continue;
          }
          REQUIRE((copy.words == nullptr) != (copy.values == nullptr));
          if (sgemm) REQUIRE(copy.values != nullptr);
          const std::vector<float> ph = host(p);
          std::vector<float> got(n);
          if (copy.words != nullptr) {
            std::vector<std::uint16_t> w(n);
            Kokkos::deep_copy(Kokkos::View<std::uint16_t*, Layout, HostSpace, Kokkos::MemoryUnmanaged>(w.data(), n),
                              Kokkos::View<std::uint16_t*, Layout, MemSpace, Kokkos::MemoryUnmanaged>(copy.words, n));
            for (std::size_t i = 0; i < n; ++i) got[i] = kernels::from_bf16(w[i]);
          } else {
            Kokkos::deep_copy(Kokkos::View<float*, Layout, HostSpace, Kokkos::MemoryUnmanaged>(got.data(), n),
                              Kokkos::View<float*, Layout, MemSpace, Kokkos::MemoryUnmanaged>(copy.values, n));
          }
          for (std::size_t i = begin; i < std::min(end, at); ++i) wrong += got[i] != kernels::round_bf16(ph[i]);
          REQUIRE(wrong == 0);
          // A product over the middle tensor's first 16 x 64 weights, from the copy: overwrite
          // those parameters now (not declared again); the product must not see it.
          const std::size_t w0 = ts[1].offset;
          View1<float> x("x", 64), y("y", 16);
          load(x, floats(randn(64, 30)));
          Kokkos::deep_copy(View1<float>(p.data() + w0, 16 * 64), 1e3f);
          blas.gemm<float>(false, true, 1, 16, 64, 1.0f, x.data(), 64, p.data() + w0, 64, 0.0f, y.data(), 16);
          const std::vector<float> xh = host(x), yh = host(y);
          for (int j = 0; j < 16; ++j) {
            double want = 0;
            for (int k = 0; k < 64; ++k)
              want += double(kernels::round_bf16(xh[std::size_t(k)])) * double(got[w0 + std::size_t(j) * 64 + std::size_t(k)]);
            REQUIRE(std::abs(yh[std::size_t(j)] - want) < 1e-3);
          }
          load(p, ph);  // as the step left them
        }
      }
}

TEST_CASE("padded vocabulary rows never receive probability or gradient", "[model]") {
  model::GPT gpt(tiny(), 1, 4);
  gpt.init_random(3);
  kernels::Blas blas;
  gpt.zero_grad();
  gpt.forward(blas, {1, 2, 3, 4}, {2, 3, 4, 5});
  gpt.backward(blas, 1.0);
  auto g = Kokkos::create_mirror_view(gpt.grads());
  Kokkos::deep_copy(g, gpt.grads());
  const int C = tiny().d_model;
  for (int v = tiny().vocab_size; v < tiny().vocab_padded(); ++v)
    for (int c = 0; c < C; ++c) REQUIRE(g(std::size_t(v * C + c)) == 0.0f);
}

TEST_CASE("gradient accumulation over 2 micro-batches of 4 equals one batch of 8", "[train][invariant]") {
  std::ostringstream log;
  auto a = small_run();
  a.batch_size = 8;
  auto b = small_run();
  b.batch_size = 4, b.grad_accum = 2;
  const auto ra = run(a, log), rb = run(b, log);
  REQUIRE(ra.steps.size() == 6);
  for (std::size_t s = 0; s < ra.steps.size(); ++s) {
    CAPTURE(s, ra.steps[s].loss, rb.steps[s].loss);
    // fp32 sums in another order: the losses agree to ~1e-6 relative; 1e-4 leaves room for 6 steps of drift.
    REQUIRE(std::abs(ra.steps[s].loss - rb.steps[s].loss) <= 1e-4 * ra.steps[s].loss);
    REQUIRE(std::abs(ra.steps[s].grad_norm - rb.steps[s].grad_norm) <= 1e-3 * ra.steps[s].grad_norm);
  }
}

TEST_CASE("tiled attention trains like the T x T matrix kernel", "[train][invariant][tiled]") {
  // Tolerance: the two kernels sum the softmax and its products in another order (fp32). Measured
  // over these 12 steps: 4.2e-9 relative; 1e-6 is the bound.
  // Both GPT-2 and a Llama-style model (RoPE, grouped-query heads: 4 on 2, QK-norm).
  const bool llama = GENERATE(false, true);
  CAPTURE(llama);
  auto c = small_run();
  c.steps = 12, c.seq_len = 32;  // one tile of 32 rows; the kernel tests cover several tiles
  if (llama) {
    auto& m = c.model;
    m.n_head = 4, m.n_kv_head = 2, m.norm = "rmsnorm", m.positions = "rope", m.mlp = "swiglu", m.ffn_dim = 64;
    m.qk_norm = true, m.tie_embeddings = false, m.bias = false;
  }
  std::ostringstream log;
  c.attention = "matrix";
  const auto ref = run(c, log);
  c.attention = "tiled";
  const auto tiled = run(c, log);
  REQUIRE(ref.steps.size() == tiled.steps.size());
  REQUIRE(ref.steps.size() >= 10);
  double worst = 0;
  for (std::size_t i = 0; i < ref.steps.size(); ++i)
    worst = std::max(worst, std::abs(ref.steps[i].loss - tiled.steps[i].loss) / ref.steps[i].loss);
  std::printf("tiled vs matrix attention: largest relative loss difference %.3g over %zu steps\n", worst,
              ref.steps.size());
  REQUIRE(worst < 1e-6);
  REQUIRE(worst > 0);  // they really are different kernels
}

TEST_CASE("training is bit-for-bit deterministic", "[train][invariant]") {
  std::ostringstream log;
  const auto r1 = run(small_run(), log), r2 = run(small_run(), log);
  for (std::size_t s = 0; s < r1.steps.size(); ++s) REQUIRE(r1.steps[s].loss == r2.steps[s].loss);
}

TEST_CASE("an exported llm.c checkpoint restarts with the same loss", "[train][llmc]") {
  const std::string ckpt = (fs::temp_directory_path() / "tapestry_test_export.bin").string();
  std::ostringstream log;
  auto a = small_run();
  a.export_llmc = ckpt;
  const auto ra = run(a, log);
  // The continuation from the export sees the same weights: its first loss equals a fresh forward.
  auto b = small_run();
  b.init_from = ckpt;
  b.steps = 1;
  const auto rb = run(b, log);
  model::GPT gpt(io::read_llmc_header(ckpt), b.batch_size, b.seq_len);
  gpt.load_params(io::read_llmc_params(ckpt, std::size_t(gpt.config().num_parameters())));
  kernels::Blas blas;
  io::DataLoader::Options lo;
  lo.batch_size = b.batch_size, lo.seq_len = b.seq_len, lo.vocab_size = 256;
  io::DataLoader loader({io::DataSource{1.0, corpus().train}}, lo);
  std::vector<int> in, tg;
  loader.next_batch(in, tg);
  REQUIRE(rb.steps[0].loss == gpt.forward(blas, in, tg));
  REQUIRE(rb.steps[0].loss < ra.steps[0].loss);  // it continues from trained weights
  fs::remove(ckpt);
}

namespace {
/// A 2-layer C=64 model on the embedded corpus with validation every `val_every` steps.
TrainConfig corpus_run(int steps, double lr, int val_every) {
  auto c = small_run();
  c.model.n_layer = 2, c.model.d_model = 64, c.model.n_head = 4, c.model.max_seq_len = 64;
  c.seq_len = 64, c.batch_size = 8, c.steps = steps, c.val_every = val_every, c.val_batches = 4;
  c.optim.lr = lr, c.optim.warmup_steps = 10;
  c.val_data = corpus().val;
  return c;
}
}  // namespace

TEST_CASE("the default-sized model learns the embedded corpus", "[train][learns]") {
  const auto c = corpus_run(60, 3e-3, 30);
  std::ostringstream log;
  const auto r = run(c, log);
  REQUIRE(r.val.size() == 3);
  REQUIRE(r.val.front().loss > 5.0);                  // ~ln(256) = 5.55 at initialisation
  REQUIRE(r.val.back().loss < r.val.front().loss - 2.0);  // bytes of English: well below uniform
  REQUIRE(log.str().find("step    60/60 | loss") != std::string::npos);
}

TEST_CASE("bf16 mixed precision tracks the fp32 run over 100 steps", "[train][bf16]") {
  // bf16 matmul inputs (and bf16 attention: GptOptions::bf16_attention) with fp32 accumulation,
  // weights and AdamW: the losses differ from fp32 from the first step on (rounding). Stated
  // tolerance: the median per-step relative difference < 0.5%; every 10-step window's mean within
  // 3%, except at most two windows (a loss spike that one run reaches a few steps before the other
  // can straddle a window boundary) which stay within 25%; final validation < 1%.
  // Single steps are not bounded: in the corpus's loss spike (steps 58-62 for GPT-2) the two runs
  // spike at different steps and meet again after it. Measured on the CPU (2026-12-01, bf16
  // attention, oneDNN's bf16 products): GPT-2 median per step 1.5e-4 (mean 0.84%), the spike window
  // (steps 50-59: bf16 spiked at 58, fp32 at 60) 4.35%, every other window <= 0.33%, validation
  // 0.05%; with rounded inputs through sgemm median 3.1e-4, spike window 0.56%. The spike window
  // moves with any change of rounding (before bf16 attention, bounded then at 3% in every window:
  // 2.03% with oneDNN, 1.73% through sgemm).
  // The same bounds hold for a Llama-style spec (RMSNorm, RoPE, GQA 4/2, SwiGLU, untied); measured
  // on the CPU: mean 2.2e-4, worst step 5.8e-3, worst window 1.7e-3, validation 2.3e-4 (no spike).
  const bool llama = GENERATE(false, true);
  CAPTURE(llama);
  auto c = corpus_run(100, 1e-3, 50);
  if (llama) {
    auto& m = c.model;
    m.n_kv_head = 2, m.norm = "rmsnorm", m.positions = "rope", m.mlp = "swiglu", m.ffn_dim = 176;
    m.tie_embeddings = false, m.bias = false;
  }
  std::ostringstream log32, log16;
  const auto f32 = run(c, log32);
  c.precision = "bf16";
  const auto b16 = run(c, log16);
  REQUIRE(f32.steps.size() == 100);
  REQUIRE(b16.steps.size() == 100);
  double worst = 0, first = 0, mean = 0, window = 0;
  std::vector<double> per_step;
  for (std::size_t i = 0; i < f32.steps.size(); ++i) {
    const double d = std::abs(b16.steps[i].loss - f32.steps[i].loss) / f32.steps[i].loss;
    REQUIRE(std::isfinite(d));
    worst = std::max(worst, d);
    mean += d / double(f32.steps.size());
    per_step.push_back(d);
    if (i == 0) first = d;
  }
  std::sort(per_step.begin(), per_step.end());
  const double median = (per_step[49] + per_step[50]) / 2;
  int wide = 0;  // windows beyond 3%
  for (std::size_t w = 0; w + 10 <= f32.steps.size(); w += 10) {
    double a = 0, b = 0;
    for (std::size_t i = w; i < w + 10; ++i) a += f32.steps[i].loss, b += b16.steps[i].loss;
    const double d = std::abs(b - a) / a;
    REQUIRE(std::isfinite(d));
    window = std::max(window, d);
    if (d >= 0.03) ++wide;
  }
  const double val = std::abs(b16.val.back().loss - f32.val.back().loss) / f32.val.back().loss;
  std::printf("bf16 vs fp32 over 100 steps (%s): relative train-loss difference median %.3g, mean %.3g, largest step %.3g, "
              "largest 10-step window %.3g (%d beyond 3%%), step 1 %.3g; final val loss %.4f vs %.4f (%.3g)\n",
              llama ? "llama" : "gpt2", median, mean, worst, window, wide, first, b16.val.back().loss,
              f32.val.back().loss, val);
  REQUIRE(first > 0);  // the matmuls really ran in bf16
  REQUIRE(median < 0.005);
  REQUIRE(wide <= 2);
  REQUIRE(window < 0.25);
  REQUIRE(val < 0.01);
  REQUIRE(f32.val.back().loss < f32.val.front().loss - 1.0);  // both learned
  REQUIRE(b16.val.back().loss < b16.val.front().loss - 1.0);
  REQUIRE(log16.str().find("bf16 matmuls") != std::string::npos);
}

TEST_CASE("a token id above the vocabulary is rejected before training", "[train][bad-input]") {
  auto c = small_run();
  c.model.vocab_size = 100;  // the corpus has bytes >= 100
  std::ostringstream log;
  REQUIRE_THROWS_WITH(run(c, log), Catch::Matchers::Contains("is >= vocab_size 100"));
}
