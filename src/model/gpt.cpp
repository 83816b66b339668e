#include "tapestry/model/gpt.hpp"

#include <cmath>
#include <random>

#include "tapestry/core/error.hpp"
#include "tapestry/kernels/attention.hpp"
#include "tapestry/kernels/attention_tiled.hpp"
#include "tapestry/kernels/crossentropy.hpp"
#include "tapestry/kernels/elementwise.hpp"
#include "tapestry/kernels/embedding.hpp"
#include "tapestry/kernels/layernorm.hpp"
#include "tapestry/kernels/matmul.hpp"

namespace tapestry::model {

namespace {
enum Idx { WTE, WPE, LN1W, LN1B, QKVW, QKVB, ATTPROJW, ATTPROJB, LN2W, LN2B, FCW, FCB, FCPROJW, FCPROJB, LNFW, LNFB };

View1<float> as1(const View2<float>& v) { return View1<float>(v.data(), v.size()); }
}  // namespace

std::vector<ParamTensor> param_layout(const ModelConfig& m, int tp, const Stage& stage) {
  const std::int64_t C = m.d_model, L = stage.num_layers < 0 ? m.n_layer : stage.num_layers, k = tp;
  const std::int64_t Vp = stage.embed || stage.head ? m.vocab_padded() : 0, maxT = stage.embed ? m.max_seq_len : 0;
  const std::int64_t Cf = stage.head ? C : 0;  // final LayerNorm
  const std::int64_t Cl = C / k;  // this rank's share of C (whole heads)
  std::vector<ParamTensor> t = {
      {"wte", {Vp / k, C}, 0, 0, true, Split::rows},        {"wpe", {maxT, C}, 0, 0, true, Split::none},
      {"ln1w", {L, C}, 0, 0, false, Split::none},           {"ln1b", {L, C}, 0, 0, false, Split::none},
      {"qkvw", {L, 3 * Cl, C}, 0, 0, true, Split::rows_qkv}, {"qkvb", {L, 3 * Cl}, 0, 0, false, Split::rows_qkv},
      {"attprojw", {L, C, Cl}, 0, 0, true, Split::cols},    {"attprojb", {L, C}, 0, 0, false, Split::none},
      {"ln2w", {L, C}, 0, 0, false, Split::none},           {"ln2b", {L, C}, 0, 0, false, Split::none},
      {"fcw", {L, 4 * Cl, C}, 0, 0, true, Split::rows},     {"fcb", {L, 4 * Cl}, 0, 0, false, Split::rows},
      {"fcprojw", {L, C, 4 * Cl}, 0, 0, true, Split::cols}, {"fcprojb", {L, C}, 0, 0, false, Split::none},
      {"lnfw", {Cf}, 0, 0, false, Split::none},             {"lnfb", {Cf}, 0, 0, false, Split::none},
  };
  std::size_t off = 0;
  for (auto& p : t) {
    p.size = 1;
    for (auto d : p.shape) p.size *= std::size_t(d);
    p.offset = off;
    off += p.size;
  }
  return t;
}

void validate_tp(const ModelConfig& m, int tp) {
  require(tp >= 1, "tp must be >= 1 (got " + std::to_string(tp) + ")");
  require(m.n_head % tp == 0, "n_head (" + std::to_string(m.n_head) + ") is not divisible by tp (" +
                                  std::to_string(tp) + "): attention heads are split over the tensor-parallel ranks");
  require(m.vocab_padded() % tp == 0, "the padded vocabulary (" + std::to_string(m.vocab_padded()) +
                                          ") is not divisible by tp (" + std::to_string(tp) +
                                          "): set --padded-vocab-size to a multiple of tp");
}

template <class F> void GPT::for_each_element(F&& f) const {
  const int r = tp_->rank();
  for (std::size_t i = 0; i < layout_.size(); ++i) {
    const auto &t = layout_[i], &w = whole_[i];
    if (t.size == 0) continue;  // not on this pipeline stage
    const bool stacked = !(t.name == "wte" || t.name == "wpe" || t.name == "lnfw" || t.name == "lnfb");
    const std::size_t layers = stacked ? std::size_t(t.shape[0]) : 1;
    const std::size_t d = stacked ? 1 : 0;  // first per-layer dimension
    const bool two_d = t.shape.size() == d + 2;
    const std::size_t Rl = std::size_t(t.shape[d]), Cl = two_d ? std::size_t(t.shape[d + 1]) : 1;
    const std::size_t Rw = std::size_t(w.shape[d]), Cw = two_d ? std::size_t(w.shape[d + 1]) : 1;
    const bool replicated = t.split == Split::none;  // whole on every TP rank
    const std::size_t l0 = stacked ? std::size_t(stage_.first_layer) : 0;
    for (std::size_t l = 0; l < layers; ++l)
      for (std::size_t a = 0; a < Rl; ++a) {
        std::size_t ga = a, col0 = 0;
        if (t.split == Split::rows) ga = std::size_t(r) * Rl + a;
        if (t.split == Split::rows_qkv) {
          const std::size_t b = Rl / 3;
          ga = (a / b) * (Rw / 3) + std::size_t(r) * b + a % b;
        }
        if (t.split == Split::cols) col0 = std::size_t(r) * Cl;
        const std::size_t lo = t.offset + (l * Rl + a) * Cl, wo = w.offset + ((l0 + l) * Rw + ga) * Cw + col0;
        for (std::size_t c = 0; c < Cl; ++c) f(lo + c, wo + c, replicated);
      }
  }
}

std::vector<float> GPT::take_part(const std::vector<float>& whole) const {
  require(whole.size() == n_whole_, "take_part: parameter count mismatch");
  std::vector<float> part(n_params_);
  for_each_element([&](std::size_t l, std::size_t w, bool) { part[l] = whole[w]; });
  return part;
}

std::vector<float> GPT::gather_whole(View1<float> local) const {
  const auto h = Kokkos::create_mirror_view_and_copy(HostSpace(), local);
  std::vector<float> whole(n_whole_, 0.0f);
  const bool lead = tp_->rank() == 0;  // replicated tensors: from one rank, so the sum counts them once
  for_each_element([&](std::size_t l, std::size_t w, bool replicated) {
    const bool tied_copy = !stage_.embed && w < whole_[0].size;  // the last stage's wte
    if (!tied_copy && (!replicated || lead)) whole[w] = h(l);
  });
  if (tp_->size() > 1) {
    View1<float> dev("tapestry::gather_whole", n_whole_);
    Kokkos::View<float*, Layout, HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> hw(whole.data(), whole.size());
    Kokkos::deep_copy(dev, hw);
    tp_->all_reduce_sum(dev.data(), n_whole_);
    Kokkos::deep_copy(hw, dev);
  }
  return whole;
}

GPT::GPT(const ModelConfig& cfg, int B, int T, std::size_t pad_multiple, const GptOptions& options)
    : cfg_(cfg), B_(B), T_(T), tp_(options.tp != nullptr ? options.tp : &solo_), stage_(options.stage),
      tiled_(options.tiled_attention) {
  const bool sequence_parallel = options.sequence_parallel;
  if (stage_.num_layers < 0) stage_.num_layers = cfg.n_layer;
  validate(cfg_);
  const int k = tp_->size();
  validate_tp(cfg_, k);
  sp_ = sequence_parallel && k > 1;
  require(!sp_ || (B * T) % k == 0, "sequence parallelism splits the " + std::to_string(B * T) +
                                        " tokens of a micro-batch (batch-size x seq-len) over tp = " +
                                        std::to_string(k) + ": they must divide");
  layout_ = param_layout(cfg_, k, stage_);
  whole_ = param_layout(cfg_, 1);
  n_whole_ = whole_.back().offset + whole_.back().size;
  require(T <= cfg_.max_seq_len, "seq_len (" + std::to_string(T) + ") is above the model's max_seq_len (" +
                                     std::to_string(cfg_.max_seq_len) + ")");
  n_params_ = layout_.back().offset + layout_.back().size;
  const std::size_t pad = pad_multiple > 0 ? pad_multiple : 1;
  const std::size_t n = (n_params_ + pad - 1) / pad * pad;
  params_ = View1<float>("tapestry::params", n);
  grads_ = View1<float>("tapestry::grads", n);
  const int N = B * T, C = cfg_.d_model, Cl = C / k, NHl = cfg_.n_head / k, Vl = cfg_.vocab_padded() / k;
  const int Nc = sp_ ? N / k : N;
  rows_ = Nc;
  // A chunk view: its own (Nc, C) buffer with sequence parallelism, else the full view itself.
  auto chunk_of = [&](const View2<float>& full, const char* name) {
    return sp_ ? View2<float>(std::string(name), std::size_t(Nc), std::size_t(C)) : full;
  };
  tokens_ = TokenView("tapestry::tokens", B, T);
  targets_ = decltype(targets_)("tapestry::targets", N);
  emb_full_ = View2<float>("tapestry::embedding_partial", N, C);
  encoded_ = chunk_of(emb_full_, "tapestry::encoded");
  lnf_ = View2<float>("tapestry::lnf", N, C);
  lnfc_ = chunk_of(lnf_, "tapestry::lnf_chunk");
  logits_ = View2<float>("tapestry::logits", N, Vl);
  lnf_mean_ = View1<float>("tapestry::lnf_mean", Nc);
  lnf_rstd_ = View1<float>("tapestry::lnf_rstd", Nc);
  losses_ = View1<float>("tapestry::losses", N);
  layers_.resize(std::size_t(stage_.num_layers));
  // With sequence parallelism a layer keeps only its LayerNorm outputs' token chunks; the full
  // inputs of the split layers are all-gathered into one shared buffer, again in backward.
  if (sp_) ln_full_ = View2<float>("tapestry::ln_full", N, C);
  for (auto& a : layers_) {
    a.ln1 = sp_ ? ln_full_ : View2<float>("tapestry::ln1", N, C);
    a.ln1c = chunk_of(a.ln1, "tapestry::ln1_chunk");
    a.qkv = View2<float>("tapestry::qkv", N, 3 * Cl);
    a.atty = View2<float>("tapestry::atty", N, Cl);
    a.res2 = View2<float>("tapestry::res2", Nc, C);
    a.ln2 = sp_ ? ln_full_ : View2<float>("tapestry::ln2", N, C);
    a.ln2c = chunk_of(a.ln2, "tapestry::ln2_chunk");
    a.fch = View2<float>("tapestry::fch", N, 4 * Cl);
    a.fch_gelu = View2<float>("tapestry::fch_gelu", N, 4 * Cl);
    a.res3 = View2<float>("tapestry::res3", Nc, C);
    a.ln1_mean = View1<float>("tapestry::ln1_mean", Nc);
    a.ln1_rstd = View1<float>("tapestry::ln1_rstd", Nc);
    a.ln2_mean = View1<float>("tapestry::ln2_mean", Nc);
    a.ln2_rstd = View1<float>("tapestry::ln2_rstd", Nc);
    if (tiled_) a.lse = View3<float>("tapestry::attention_lse", B, NHl, T);
    else a.att = View4<float>("tapestry::att", B, NHl, T, T);
  }
  proj_ = View2<float>("tapestry::proj", N, C);
  projc_ = chunk_of(proj_, "tapestry::proj_chunk");
  dres_ = View2<float>("tapestry::dresidual", Nc, C);
  dresf_ = sp_ ? View2<float>("tapestry::dresidual_full", N, C) : dres_;
  dtmp_ = View2<float>("tapestry::dtmp", N, C);
  dtmpc_ = chunk_of(dtmp_, "tapestry::dtmp_chunk");
  dbig_ = View2<float>("tapestry::dfch", N, 4 * Cl);
  dqkv_ = View2<float>("tapestry::dqkv", N, 3 * Cl);
  datty_ = View2<float>("tapestry::datty", N, Cl);
  if (!tiled_) datt_ = View4<float>("tapestry::datt", B, NHl, T, T);
  if (k > 1) xent_stats_ = View3<float>("tapestry::xent_stats", k, N, 3);
  if (sp_) {
    std::size_t ln = 0;  // LayerNorm gains and biases
    for (const auto& t : layout_)
      if (t.name.rfind("ln", 0) == 0) ln += t.size;
    ln_grad_saved_ = View1<float>("tapestry::ln_grad_saved", ln);
  }
}

View2<float> GPT::p2(const View1<float>& flat, int idx, int layer) const {
  const auto& t = layout_[std::size_t(idx)];
  const auto r = t.shape.size();
  const std::int64_t d0 = t.shape[r - 2], d1 = t.shape[r - 1];
  return View2<float>(flat.data() + t.offset + std::size_t(layer) * std::size_t(d0 * d1), d0, d1);
}

View1<float> GPT::p1(const View1<float>& flat, int idx, int layer) const {
  const auto& t = layout_[std::size_t(idx)];
  const std::int64_t d = t.shape.back();
  return View1<float>(flat.data() + t.offset + std::size_t(layer) * std::size_t(d), d);
}

void GPT::init_random(std::uint64_t seed) {
  std::vector<float> h(n_whole_, 0.0f);  // the whole model, then this rank's part of it
  // Box-Muller on mt19937_64 words: no rejection loop (std::normal_distribution's polar method
  // rejects on a rounded comparison, so one last-bit difference between compilers or -march
  // flags shifts every later draw). Here a last-bit difference stays in its own value, and every
  // build - CPU or CUDA, any layout - starts from the same weights.
  std::mt19937_64 rng(seed);
  auto uniform = [&rng] { return (double(rng() >> 11) + 0.5) * 0x1p-53; };  // (0, 1), never 0
  auto normal = [&](double std) {
    const double u1 = uniform(), u2 = uniform();
    return float(std * std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  };
  const double resid_std = 0.02 / std::sqrt(2.0 * double(cfg_.n_layer));
  for (std::size_t i = 0; i < whole_.size(); ++i) {
    const auto& t = whole_[i];
    float* p = h.data() + t.offset;
    std::size_t n = t.size;
    if (t.name == "wte") n = std::size_t(cfg_.vocab_size) * std::size_t(cfg_.d_model);
    const bool gain = t.name == "ln1w" || t.name == "ln2w" || t.name == "lnfw";
    const bool residual = t.name == "attprojw" || t.name == "fcprojw";
    for (std::size_t j = 0; j < t.size; ++j) {
      float v = 0.0f;
      if (gain)
        v = 1.0f;
      else if (t.decay && j < n)
        v = normal(residual ? resid_std : 0.02);
      p[j] = v;
    }
  }
  load_params(h);
}

void GPT::load_params(const std::vector<float>& host) {
  require(host.size() == n_whole_, "load_params: parameter count mismatch");
  const std::vector<float> part = tp_->size() == 1 && stage_.whole() ? host : take_part(host);
  Kokkos::deep_copy(params_, 0.0f);
  Kokkos::View<const float*, Layout, HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> h(part.data(), part.size());
  Kokkos::deep_copy(View1<float>(params_.data(), n_params_), h);
}

void GPT::zero_grad() { Kokkos::deep_copy(grads_, 0.0f); }

std::size_t GPT::param_bytes() const { return 2 * params_.span() * sizeof(float); }

std::size_t GPT::activation_bytes() const {
  std::size_t n = emb_full_.span() + lnf_.span() + logits_.span() + lnf_mean_.span() + lnf_rstd_.span() +
                  losses_.span() + proj_.span() + dres_.span() + dtmp_.span() + dbig_.span() +
                  dqkv_.span() + datty_.span() + datt_.span() + xent_stats_.span() + ln_grad_saved_.span();
  if (sp_) n += encoded_.span() + lnfc_.span() + projc_.span() + dresf_.span() + dtmpc_.span() + ln_full_.span();
  for (const auto& a : layers_) {
    if (!sp_) n += a.ln1.span() + a.ln2.span();
    n += a.qkv.span() + a.atty.span() + a.res2.span() + a.fch.span() +
         a.fch_gelu.span() + a.res3.span() + a.ln1_mean.span() + a.ln1_rstd.span() +
         a.ln2_mean.span() + a.ln2_rstd.span() + a.att.span() + a.lse.span();
    if (sp_) n += a.ln1c.span() + a.ln2c.span();
  }
  return n * sizeof(float) + (tokens_.span() + targets_.span()) * sizeof(int);
}

double GPT::forward(const kernels::Blas& blas, const std::vector<int>& inputs,
                    const std::vector<int>& targets) {
  using namespace kernels;
  const auto& ex = blas.exec();
  const int k = tp_->size(), N = B_ * T_, C = cfg_.d_model, Cl = C / k, NHl = cfg_.n_head / k;
  const int v0 = tp_->rank() * (cfg_.vocab_padded() / k);  // this rank's first vocabulary row
  const bool lead = tp_->rank() == 0;  // adds the replicated terms that a sum over the group must count once
  require(inputs.size() == std::size_t(N) && targets.size() == std::size_t(N),
          "forward: expected " + std::to_string(N) + " inputs and targets");
  for (std::size_t i = 0; i < inputs.size(); ++i)
    require(inputs[i] >= 0 && inputs[i] < cfg_.vocab_size && targets[i] >= 0 && targets[i] < cfg_.vocab_size,
            "token id " + std::to_string(std::max(inputs[i], targets[i])) + " is >= vocab_size " +
                std::to_string(cfg_.vocab_size));
  {
    Kokkos::View<const int**, Layout, HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> h(inputs.data(), B_, T_);
    Kokkos::deep_copy(ex, tokens_, h);
    if (stage_.embed) token_rows_.build(ex, inputs, v0, cfg_.vocab_padded() / k);
    Kokkos::View<const int*, Layout, HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> ht(targets.data(), N);
    Kokkos::deep_copy(ex, targets_, ht);
  }
  const auto& P = params_;
  // Megatron's communication around the split layers; with sequence parallelism the full (BT, C)
  // tensors meet the token chunks through all-gather / reduce-scatter instead of all-reduce.
  auto into_chunk = [&](View2<float> full, View2<float> chunk) {  // g: partial sums -> summed chunk
    if (sp_) reduce_scatter_to_sequence_region(*tp_, full, chunk);
    else reduce_from_tp_region_forward(*tp_, full);
  };
  auto into_full = [&](View2<float> chunk, View2<float> full) {  // f: chunk -> full input
    if (sp_) gather_from_sequence_region(*tp_, chunk, full);
  };
  if (stage_.embed) {
    embedding_forward(ex, View3<float>(emb_full_.data(), B_, T_, C), tokens_, p2(P, WTE), p2(P, WPE), v0, lead);
    into_chunk(emb_full_, encoded_);  // vocabulary-parallel embedding
  }
  View2<float> x = encoded_;
  for (int l = 0; l < stage_.num_layers; ++l) {
    auto& a = layers_[std::size_t(l)];
    layernorm_forward(ex, a.ln1c, a.ln1_mean, a.ln1_rstd, x, p1(P, LN1W, l), p1(P, LN1B, l));
    into_full(a.ln1c, a.ln1);
    // Attention: column-parallel QKV (this rank's heads), row-parallel output projection.
    matmul_forward(blas, a.qkv, a.ln1, p2(P, QKVW, l), p1(P, QKVB, l));
    if (tiled_)
      attention_tiled_forward<float>(ex, View3<float>(a.atty.data(), B_, T_, Cl), a.lse,
                                     View3<float>(a.qkv.data(), B_, T_, 3 * Cl), NHl);
    else
      attention_forward(blas, View3<float>(a.atty.data(), B_, T_, Cl), a.att,
                        View3<float>(a.qkv.data(), B_, T_, 3 * Cl), NHl);
    matmul_forward(blas, proj_, a.atty, p2(P, ATTPROJW, l), lead ? p1(P, ATTPROJB, l) : View1<float>());
    into_chunk(proj_, projc_);
    residual_forward(ex, as1(a.res2), as1(x), as1(projc_));
    layernorm_forward(ex, a.ln2c, a.ln2_mean, a.ln2_rstd, a.res2, p1(P, LN2W, l), p1(P, LN2B, l));
    into_full(a.ln2c, a.ln2);
    // MLP: column-parallel up projection, row-parallel down projection.
    matmul_forward(blas, a.fch, a.ln2, p2(P, FCW, l), p1(P, FCB, l));
    gelu_forward(ex, as1(a.fch_gelu), as1(a.fch));
    matmul_forward(blas, proj_, a.fch_gelu, p2(P, FCPROJW, l), lead ? p1(P, FCPROJB, l) : View1<float>());
    into_chunk(proj_, projc_);
    residual_forward(ex, as1(a.res3), as1(a.res2), as1(projc_));
    x = a.res3;
  }
  if (!stage_.head) return 0.0;
  layernorm_forward(ex, lnfc_, lnf_mean_, lnf_rstd_, x, p1(P, LNFW), p1(P, LNFB));
  into_full(lnfc_, lnf_);
  matmul_forward(blas, logits_, lnf_, p2(P, WTE), View1<float>());  // this rank's vocabulary columns
  if (k == 1) {
    softmax_xent_forward(ex, logits_, losses_, logits_, targets_, cfg_.vocab_size);
  } else {  // vocabulary-parallel cross-entropy: 3 numbers per row and rank cross the group
    Kokkos::deep_copy(ex, xent_stats_, 0.0f);
    xent_shard_stats<float>(ex, Kokkos::subview(xent_stats_, tp_->rank(), Kokkos::ALL, Kokkos::ALL), logits_,
                            targets_, cfg_.vocab_size, v0);
    Kokkos::fence();
    tp_->all_reduce_sum(xent_stats_.data(), xent_stats_.size());
    xent_shard_finish<float>(ex, logits_, losses_, logits_, xent_stats_, cfg_.vocab_size, v0);
  }
  double sum = 0;
  const auto losses = losses_;
  Kokkos::parallel_reduce(
      "tapestry::mean_loss", Kokkos::RangePolicy<ExecSpace>(ex, 0, N),
      KOKKOS_LAMBDA(int i, double& acc) { acc += double(losses(i)); }, sum);
  return sum / N;
}

void GPT::backward(const kernels::Blas& blas, double loss_scale) {
  using namespace kernels;
  const auto& ex = blas.exec();
  const int k = tp_->size(), N = B_ * T_, Cl = cfg_.d_model / k, NHl = cfg_.n_head / k;
  const int v0 = tp_->rank() * (cfg_.vocab_padded() / k);
  const auto &P = params_, &G = grads_;
  // The LayerNorm gains and biases see only this rank's token chunk with sequence parallelism:
  // their gradients are partial and get summed over the group below (this micro-batch's only).
  std::vector<View1<float>> ln_grads;
  if (sp_) {
    std::size_t saved = 0;  // ln_grad_saved_ holds the three ranges back to back
    for (const auto& [first, last] : {std::pair{LN1W, LN1B}, std::pair{LN2W, LN2B}, std::pair{LNFW, LNFB}}) {
      const std::size_t off = layout_[std::size_t(first)].offset;
      const std::size_t len = layout_[std::size_t(last)].offset + layout_[std::size_t(last)].size - off;
      ln_grads.emplace_back(G.data() + off, len);
      Kokkos::deep_copy(ex, View1<float>(ln_grad_saved_.data() + saved, len), ln_grads.back());
      Kokkos::deep_copy(ex, ln_grads.back(), 0.0f);
      saved += len;
    }
  }
  auto input_grad = [&](View2<float> full, View2<float> chunk) {  // backward of f: sum the partials
    if (sp_) reduce_scatter_to_sequence_region(*tp_, full, chunk);
    else copy_to_tp_region_backward(*tp_, full);
  };
  auto output_grad = [&](View2<float> chunk, View2<float> full) {  // backward of g: the full gradient
    if (sp_) gather_from_sequence_region(*tp_, chunk, full);
  };
  if (stage_.head) {
    softmax_xent_backward(ex, logits_, logits_, targets_, loss_scale / N, cfg_.vocab_size, v0);
    matmul_backward(blas, dtmp_, p2(G, WTE), View1<float>(), logits_, lnf_, p2(P, WTE));
    input_grad(dtmp_, dtmpc_);
    Kokkos::deep_copy(ex, dres_, 0.0f);
    layernorm_backward(ex, dres_, p1(G, LNFW), p1(G, LNFB), dtmpc_, stage_output(), p1(P, LNFW), lnf_mean_,
                       lnf_rstd_);
  }  // else dres_ holds d(stage output), from the next stage
  for (int l = stage_.num_layers - 1; l >= 0; --l) {
    auto& a = layers_[std::size_t(l)];
    const View2<float> x = l == 0 ? encoded_ : layers_[std::size_t(l - 1)].res3;
    // dres holds d(res3): through the MLP.
    output_grad(dres_, dresf_);
    matmul_backward(blas, dbig_, p2(G, FCPROJW, l), p1(G, FCPROJB, l), dresf_, a.fch_gelu, p2(P, FCPROJW, l));
    gelu_backward(ex, as1(dbig_), as1(a.fch), as1(dbig_));
    if (sp_) gather_from_sequence_region(*tp_, a.ln2c, a.ln2);  // recomputed, not kept
    matmul_backward(blas, dtmp_, p2(G, FCW, l), p1(G, FCB, l), dbig_, a.ln2, p2(P, FCW, l));
    input_grad(dtmp_, dtmpc_);
    layernorm_backward(ex, dres_, p1(G, LN2W, l), p1(G, LN2B, l), dtmpc_, a.res2, p1(P, LN2W, l),
                       a.ln2_mean, a.ln2_rstd);
    // dres holds d(res2): through attention.
    output_grad(dres_, dresf_);
    matmul_backward(blas, datty_, p2(G, ATTPROJW, l), p1(G, ATTPROJB, l), dresf_, a.atty, p2(P, ATTPROJW, l));
    if (tiled_)
      attention_tiled_backward<float>(ex, View3<float>(dqkv_.data(), B_, T_, 3 * Cl),
                                      View3<float>(datty_.data(), B_, T_, Cl), View3<float>(a.qkv.data(), B_, T_, 3 * Cl),
                                      View3<float>(a.atty.data(), B_, T_, Cl), a.lse, NHl);
    else
      attention_backward(blas, View3<float>(dqkv_.data(), B_, T_, 3 * Cl), datt_,
                         View3<float>(datty_.data(), B_, T_, Cl), View3<float>(a.qkv.data(), B_, T_, 3 * Cl),
                         a.att, NHl);
    if (sp_) gather_from_sequence_region(*tp_, a.ln1c, a.ln1);
    matmul_backward(blas, dtmp_, p2(G, QKVW, l), p1(G, QKVB, l), dqkv_, a.ln1, p2(P, QKVW, l));
    input_grad(dtmp_, dtmpc_);
    layernorm_backward(ex, dres_, p1(G, LN1W, l), p1(G, LN1B, l), dtmpc_, x, p1(P, LN1W, l),
                       a.ln1_mean, a.ln1_rstd);
    // dres holds d(x), the layer input.
  }
  if (stage_.embed) {
    output_grad(dres_, dresf_);
    embedding_backward(ex, p2(G, WTE), p2(G, WPE), View3<float>(dresf_.data(), B_, T_, cfg_.d_model), token_rows_);
  }  // else dres_ holds d(stage input), for the previous stage
  if (sp_) {
    Kokkos::fence();
    std::size_t saved = 0;
    for (auto& g : ln_grads) {
      tp_->all_reduce_sum(g.data(), g.extent(0));
      residual_forward(ex, g, g, View1<float>(ln_grad_saved_.data() + saved, g.extent(0)));  // + earlier micro-batches
      saved += g.extent(0);
    }
  }
}

}  // namespace tapestry::model
