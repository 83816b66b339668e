#include "tapestry/model/gpt.hpp"

#include <cmath>
#include <random>

#include "tapestry/core/error.hpp"
#include "tapestry/kernels/attention.hpp"
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

std::vector<ParamTensor> param_layout(const ModelConfig& m) {
  const std::int64_t C = m.d_model, L = m.n_layer, Vp = m.vocab_padded(), maxT = m.max_seq_len;
  std::vector<ParamTensor> t = {
      {"wte", {Vp, C}, 0, 0, true},          {"wpe", {maxT, C}, 0, 0, true},
      {"ln1w", {L, C}, 0, 0, false},         {"ln1b", {L, C}, 0, 0, false},
      {"qkvw", {L, 3 * C, C}, 0, 0, true},   {"qkvb", {L, 3 * C}, 0, 0, false},
      {"attprojw", {L, C, C}, 0, 0, true},   {"attprojb", {L, C}, 0, 0, false},
      {"ln2w", {L, C}, 0, 0, false},         {"ln2b", {L, C}, 0, 0, false},
      {"fcw", {L, 4 * C, C}, 0, 0, true},    {"fcb", {L, 4 * C}, 0, 0, false},
      {"fcprojw", {L, C, 4 * C}, 0, 0, true}, {"fcprojb", {L, C}, 0, 0, false},
      {"lnfw", {C}, 0, 0, false},            {"lnfb", {C}, 0, 0, false},
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

GPT::GPT(const ModelConfig& cfg, int B, int T, std::size_t pad_multiple)
    : cfg_(cfg), B_(B), T_(T), layout_(param_layout(cfg)) {
  validate(cfg_);
  require(T <= cfg_.max_seq_len, "seq_len (" + std::to_string(T) + ") is above the model's max_seq_len (" +
                                     std::to_string(cfg_.max_seq_len) + ")");
  n_params_ = layout_.back().offset + layout_.back().size;
  const std::size_t pad = pad_multiple > 0 ? pad_multiple : 1;
  const std::size_t n = (n_params_ + pad - 1) / pad * pad;
  params_ = View1<float>("tapestry::params", n);
  grads_ = View1<float>("tapestry::grads", n);
  const int N = B * T, C = cfg_.d_model, NH = cfg_.n_head, Vp = cfg_.vocab_padded();
  tokens_ = TokenView("tapestry::tokens", B, T);
  targets_ = decltype(targets_)("tapestry::targets", N);
  encoded_ = View2<float>("tapestry::encoded", N, C);
  lnf_ = View2<float>("tapestry::lnf", N, C);
  logits_ = View2<float>("tapestry::logits", N, Vp);
  lnf_mean_ = View1<float>("tapestry::lnf_mean", N);
  lnf_rstd_ = View1<float>("tapestry::lnf_rstd", N);
  losses_ = View1<float>("tapestry::losses", N);
  layers_.resize(std::size_t(cfg_.n_layer));
  for (auto& a : layers_) {
    a.ln1 = View2<float>("tapestry::ln1", N, C);
    a.qkv = View2<float>("tapestry::qkv", N, 3 * C);
    a.atty = View2<float>("tapestry::atty", N, C);
    a.res2 = View2<float>("tapestry::res2", N, C);
    a.ln2 = View2<float>("tapestry::ln2", N, C);
    a.fch = View2<float>("tapestry::fch", N, 4 * C);
    a.fch_gelu = View2<float>("tapestry::fch_gelu", N, 4 * C);
    a.res3 = View2<float>("tapestry::res3", N, C);
    a.ln1_mean = View1<float>("tapestry::ln1_mean", N);
    a.ln1_rstd = View1<float>("tapestry::ln1_rstd", N);
    a.ln2_mean = View1<float>("tapestry::ln2_mean", N);
    a.ln2_rstd = View1<float>("tapestry::ln2_rstd", N);
    a.att = View4<float>("tapestry::att", B, NH, T, T);
  }
  proj_ = View2<float>("tapestry::proj", N, C);
  dres_ = View2<float>("tapestry::dresidual", N, C);
  dtmp_ = View2<float>("tapestry::dtmp", N, C);
  dbig_ = View2<float>("tapestry::dfch", N, 4 * C);
  dqkv_ = View2<float>("tapestry::dqkv", N, 3 * C);
  datt_ = View4<float>("tapestry::datt", B, NH, T, T);
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
  auto h = Kokkos::create_mirror_view(params_);
  Kokkos::deep_copy(h, 0.0f);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  const float resid_std = 0.02f / std::sqrt(2.0f * float(cfg_.n_layer));
  std::normal_distribution<float> normal_resid(0.0f, resid_std);
  for (std::size_t i = 0; i < layout_.size(); ++i) {
    const auto& t = layout_[i];
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
        v = residual ? normal_resid(rng) : normal(rng);
      p[j] = v;
    }
  }
  Kokkos::deep_copy(params_, h);
}

void GPT::load_params(const std::vector<float>& host) {
  require(host.size() == n_params_, "load_params: parameter count mismatch");
  Kokkos::View<const float*, Layout, HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> h(host.data(), host.size());
  Kokkos::deep_copy(View1<float>(params_.data(), n_params_), h);
}

std::vector<float> GPT::params_to_host() const {
  std::vector<float> out(n_params_);
  Kokkos::View<float*, Layout, HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> h(out.data(), out.size());
  Kokkos::deep_copy(h, View1<float>(params_.data(), n_params_));
  return out;
}

void GPT::zero_grad() { Kokkos::deep_copy(grads_, 0.0f); }

std::size_t GPT::param_bytes() const { return 2 * params_.span() * sizeof(float); }

std::size_t GPT::activation_bytes() const {
  std::size_t n = encoded_.span() + lnf_.span() + logits_.span() + lnf_mean_.span() + lnf_rstd_.span() +
                  losses_.span() + proj_.span() + dres_.span() + dtmp_.span() + dbig_.span() +
                  dqkv_.span() + datt_.span();
  for (const auto& a : layers_)
    n += a.ln1.span() + a.qkv.span() + a.atty.span() + a.res2.span() + a.ln2.span() + a.fch.span() +
         a.fch_gelu.span() + a.res3.span() + a.ln1_mean.span() + a.ln1_rstd.span() +
         a.ln2_mean.span() + a.ln2_rstd.span() + a.att.span();
  return n * sizeof(float) + (tokens_.span() + targets_.span()) * sizeof(int);
}

double GPT::forward(const kernels::Blas& blas, const std::vector<int>& inputs,
                    const std::vector<int>& targets) {
  using namespace kernels;
  const auto& ex = blas.exec();
  const int N = B_ * T_, C = cfg_.d_model, NH = cfg_.n_head;
  require(inputs.size() == std::size_t(N) && targets.size() == std::size_t(N),
          "forward: expected " + std::to_string(N) + " inputs and targets");
  for (std::size_t i = 0; i < inputs.size(); ++i)
    require(inputs[i] >= 0 && inputs[i] < cfg_.vocab_size && targets[i] >= 0 && targets[i] < cfg_.vocab_size,
            "token id " + std::to_string(std::max(inputs[i], targets[i])) + " is >= vocab_size " +
                std::to_string(cfg_.vocab_size));
  {
    Kokkos::View<const int**, Layout, HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> h(inputs.data(), B_, T_);
    Kokkos::deep_copy(ex, tokens_, h);
    Kokkos::View<const int*, Layout, HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> ht(targets.data(), N);
    Kokkos::deep_copy(ex, targets_, ht);
  }
  const auto& P = params_;
  embedding_forward(ex, View3<float>(encoded_.data(), B_, T_, C), tokens_, p2(P, WTE), p2(P, WPE));
  View2<float> x = encoded_;
  for (int l = 0; l < cfg_.n_layer; ++l) {
    auto& a = layers_[std::size_t(l)];
    layernorm_forward(ex, a.ln1, a.ln1_mean, a.ln1_rstd, x, p1(P, LN1W, l), p1(P, LN1B, l));
    matmul_forward(blas, a.qkv, a.ln1, p2(P, QKVW, l), p1(P, QKVB, l));
    attention_forward(blas, View3<float>(a.atty.data(), B_, T_, C), a.att,
                      View3<float>(a.qkv.data(), B_, T_, 3 * C), NH);
    matmul_forward(blas, proj_, a.atty, p2(P, ATTPROJW, l), p1(P, ATTPROJB, l));
    residual_forward(ex, as1(a.res2), as1(x), as1(proj_));
    layernorm_forward(ex, a.ln2, a.ln2_mean, a.ln2_rstd, a.res2, p1(P, LN2W, l), p1(P, LN2B, l));
    matmul_forward(blas, a.fch, a.ln2, p2(P, FCW, l), p1(P, FCB, l));
    gelu_forward(ex, as1(a.fch_gelu), as1(a.fch));
    matmul_forward(blas, proj_, a.fch_gelu, p2(P, FCPROJW, l), p1(P, FCPROJB, l));
    residual_forward(ex, as1(a.res3), as1(a.res2), as1(proj_));
    x = a.res3;
  }
  layernorm_forward(ex, lnf_, lnf_mean_, lnf_rstd_, x, p1(P, LNFW), p1(P, LNFB));
  matmul_forward(blas, logits_, lnf_, p2(P, WTE), View1<float>());
  softmax_xent_forward(ex, logits_, losses_, logits_, targets_, cfg_.vocab_size);
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
  const int N = B_ * T_, C = cfg_.d_model, NH = cfg_.n_head;
  const auto &P = params_, &G = grads_;
  softmax_xent_backward(ex, logits_, logits_, targets_, loss_scale / N, cfg_.vocab_size);
  matmul_backward(blas, dtmp_, p2(G, WTE), View1<float>(), logits_, lnf_, p2(P, WTE));
  Kokkos::deep_copy(ex, dres_, 0.0f);
  const View2<float> xlast = layers_.back().res3;
  layernorm_backward(ex, dres_, p1(G, LNFW), p1(G, LNFB), dtmp_, xlast, p1(P, LNFW), lnf_mean_, lnf_rstd_);
  for (int l = cfg_.n_layer - 1; l >= 0; --l) {
    auto& a = layers_[std::size_t(l)];
    const View2<float> x = l == 0 ? encoded_ : layers_[std::size_t(l - 1)].res3;
    // dres holds d(res3): through the MLP.
    matmul_backward(blas, dbig_, p2(G, FCPROJW, l), p1(G, FCPROJB, l), dres_, a.fch_gelu, p2(P, FCPROJW, l));
    gelu_backward(ex, as1(dbig_), as1(a.fch), as1(dbig_));
    matmul_backward(blas, dtmp_, p2(G, FCW, l), p1(G, FCB, l), dbig_, a.ln2, p2(P, FCW, l));
    layernorm_backward(ex, dres_, p1(G, LN2W, l), p1(G, LN2B, l), dtmp_, a.res2, p1(P, LN2W, l),
                       a.ln2_mean, a.ln2_rstd);
    // dres holds d(res2): through attention.
    matmul_backward(blas, dtmp_, p2(G, ATTPROJW, l), p1(G, ATTPROJB, l), dres_, a.atty, p2(P, ATTPROJW, l));
    attention_backward(blas, View3<float>(dqkv_.data(), B_, T_, 3 * C), datt_,
                       View3<float>(dtmp_.data(), B_, T_, C), View3<float>(a.qkv.data(), B_, T_, 3 * C),
                       a.att, NH);
    matmul_backward(blas, dtmp_, p2(G, QKVW, l), p1(G, QKVB, l), dqkv_, a.ln1, p2(P, QKVW, l));
    layernorm_backward(ex, dres_, p1(G, LN1W, l), p1(G, LN1B, l), dtmp_, x, p1(P, LN1W, l),
                       a.ln1_mean, a.ln1_rstd);
    // dres holds d(x), the layer input.
  }
  embedding_backward(ex, p2(G, WTE), p2(G, WPE), View3<float>(dres_.data(), B_, T_, C), tokens_);
}

}  // namespace tapestry::model
