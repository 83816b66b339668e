#include "tapestry/model/gpt.hpp"

#include <algorithm>
#include <cmath>

#include "tapestry/core/error.hpp"
#include "tapestry/kernels/attention.hpp"
#include "tapestry/kernels/attention_tiled.hpp"
#include "tapestry/kernels/crossentropy.hpp"
#include "tapestry/kernels/elementwise.hpp"
#include "tapestry/kernels/embedding.hpp"
#include "tapestry/kernels/layernorm.hpp"
#include "tapestry/kernels/matmul.hpp"
#include "tapestry/kernels/activation.hpp"
#include "tapestry/kernels/rmsnorm.hpp"
#include "tapestry/kernels/rope.hpp"

namespace tapestry::model {

namespace {
View1<float> as1(const View2<float>& v) { return View1<float>(v.data(), v.size()); }

/// pos (B*T) = t of each row b*T + t. (A free function: CUDA's device lambdas may not live in a
/// constructor.)
void fill_positions(const Kokkos::View<int*, Layout, MemSpace>& pos, int T) {
  Kokkos::parallel_for("tapestry::positions_init", Kokkos::RangePolicy<ExecSpace>(0, int(pos.extent(0))),
                       KOKKOS_LAMBDA(int i) { pos(i) = i % T; });
}
}  // namespace

std::vector<ParamTensor> param_layout(const ModelConfig& m, int tp, const Stage& stage) {
  const std::int64_t C = m.d_model, L = stage.num_layers < 0 ? m.n_layer : stage.num_layers, k = tp;
  const std::int64_t hd = m.head_dim(), Q = std::int64_t(m.n_head) * hd, KV = std::int64_t(m.kv_heads()) * hd;
  const std::int64_t F = m.ffn(), Vp = m.vocab_padded();
  const bool tied = m.tie_embeddings, swiglu = m.mlp == "swiglu";
  // Which stage holds what: the first the embeddings, the last the final norm and output layer
  // (with tied embeddings the output layer is a copy of wte).
  const bool has_wte = stage.embed || (stage.head && tied);
  std::vector<ParamTensor> t;
  auto add = [&](std::string name, std::vector<std::int64_t> shape, Split split, Init init, bool per_layer,
                 std::vector<TensorPart> parts, std::vector<RowBlock> blocks = {}) {
    ParamTensor p;
    p.name = std::move(name), p.split = split, p.init = init, p.per_layer = per_layer, p.parts = std::move(parts);
    p.decay = init == Init::normal || init == Init::normal_residual;
    p.row_blocks = blocks;
    if (split == Split::rows) {  // this rank's share of each block
      std::int64_t rows = 0;
      for (const auto& b : blocks) rows += b.rows * b.replicas / k;
      shape[0] = rows;
    }
    if (split == Split::cols) shape.back() /= k;
    if (per_layer) shape.insert(shape.begin(), L);
    p.shape = std::move(shape);
    t.push_back(std::move(p));
  };
  const bool ln = m.norm_has_bias();
  // A norm's gain or bias: with sequence parallelism each rank sees its token chunk only.
  auto norm = [&](std::string name, std::int64_t n, Init init, bool per_layer, std::string path) {
    add(std::move(name), {n}, Split::none, init, per_layer, {{std::move(path), 0, C}});
    t.back().token_partial = true;
  };
  add("wte", {has_wte ? Vp : 0, C}, Split::rows, Init::normal, false, {{"embedding/token/weight", 0, Vp}},
      {{has_wte ? Vp : 0, 1}});
  t.back().vocab_rows = true;
  if (m.learned_positions())
    add("wpe", {stage.embed ? m.max_seq_len : 0, C}, Split::none, Init::normal, false, {{"embedding/position/weight", 0, m.max_seq_len}});
  norm("ln1w", C, Init::one, true, "attn_norm/weight");
  if (ln) norm("ln1b", C, Init::zero, true, "attn_norm/bias");
  // kv heads: split when tp divides them, else each group of tp / n_kv_head ranks holds one
  const int kv_rep = m.kv_heads() % tp == 0 ? 1 : tp / m.kv_heads();
  const std::vector<RowBlock> qkv_blocks = {{Q, 1}, {KV, kv_rep}, {KV, kv_rep}};
  add("qkvw", {Q + 2 * KV, C}, Split::rows, Init::normal, true,
      {{"attn/q/weight", 0, Q}, {"attn/k/weight", Q, KV}, {"attn/v/weight", Q + KV, KV}}, qkv_blocks);
  if (m.bias)
    add("qkvb", {Q + 2 * KV}, Split::rows, Init::zero, true,
        {{"attn/q/bias", 0, Q}, {"attn/k/bias", Q, KV}, {"attn/v/bias", Q + KV, KV}}, qkv_blocks);
  if (m.qk_norm) {
    add("qnormw", {hd}, Split::none, Init::one, true, {{"attn/q_norm/weight", 0, hd}});
    add("knormw", {hd}, Split::none, Init::one, true, {{"attn/k_norm/weight", 0, hd}});
    t[t.size() - 1].tp_partial = t[t.size() - 2].tp_partial = true;
  }
  add("attprojw", {C, Q}, Split::cols, Init::normal_residual, true, {{"attn/o/weight", 0, C}});
  if (m.bias) add("attprojb", {C}, Split::none, Init::zero, true, {{"attn/o/bias", 0, C}});
  norm("ln2w", C, Init::one, true, "mlp_norm/weight");
  if (ln) norm("ln2b", C, Init::zero, true, "mlp_norm/bias");
  const std::vector<RowBlock> up_blocks = swiglu ? std::vector<RowBlock>{{F, 1}, {F, 1}} : std::vector<RowBlock>{{F, 1}};
  const std::vector<TensorPart> up_w = swiglu ? std::vector<TensorPart>{{"mlp/gate/weight", 0, F}, {"mlp/up/weight", F, F}}
                                              : std::vector<TensorPart>{{"mlp/up/weight", 0, F}};
  const std::vector<TensorPart> up_b = swiglu ? std::vector<TensorPart>{{"mlp/gate/bias", 0, F}, {"mlp/up/bias", F, F}}
                                              : std::vector<TensorPart>{{"mlp/up/bias", 0, F}};
  add("fcw", {(swiglu ? 2 : 1) * F, C}, Split::rows, Init::normal, true, up_w, up_blocks);
  if (m.bias) add("fcb", {(swiglu ? 2 : 1) * F}, Split::rows, Init::zero, true, up_b, up_blocks);
  add("fcprojw", {C, F}, Split::cols, Init::normal_residual, true, {{"mlp/down/weight", 0, C}});
  if (m.bias) add("fcprojb", {C}, Split::none, Init::zero, true, {{"mlp/down/bias", 0, C}});
  if (m.mlp == "xielu") {
    add("xielu", {2}, Split::none, Init::xielu_alpha, true, {{"mlp/act/alpha_p", 0, 1}, {"mlp/act/alpha_n", 1, 1}});
    t.back().tp_partial = true;
  }
  const std::int64_t Cf = stage.head ? C : 0;
  norm("lnfw", Cf, Init::one, false, "final_norm/weight");
  if (ln) norm("lnfb", Cf, Init::zero, false, "final_norm/bias");
  if (!tied) {
    add("lm_head", {stage.head ? Vp : 0, C}, Split::rows, Init::normal, false, {{"lm_head/weight", 0, Vp}},
        {{stage.head ? Vp : 0, 1}});
    t.back().vocab_rows = true;
  }
  std::size_t off = 0;
  for (auto& p : t) {
    p.size = 1;
    for (auto d : p.shape) p.size *= std::size_t(d);
    p.offset = off;
    off += p.size;
  }
  return t;
}

std::int64_t output_chunk_rows(std::int64_t rows, std::int64_t d_model, std::int64_t vocab) {
  const std::int64_t r = std::max<std::int64_t>(256, (rows * d_model + vocab - 1) / std::max<std::int64_t>(1, vocab));
  return std::min(r, rows);
}

int find_tensor(const std::vector<ParamTensor>& layout, const std::string& name) {
  for (std::size_t i = 0; i < layout.size(); ++i)
    if (layout[i].name == name) return int(i);
  return -1;
}

void validate_tp(const ModelConfig& m, int tp) {
  const auto n = [](int v) { return std::to_string(v); };
  require(tp >= 1, "tp must be >= 1 (got " + n(tp) + ")");
  require(m.n_head % tp == 0, "n_head (" + n(m.n_head) + ") is not divisible by tp (" + n(tp) +
                                  "): attention heads are split over the tensor-parallel ranks");
  require(m.kv_heads() % tp == 0 || tp % m.kv_heads() == 0,
          "n_kv_head (" + n(m.kv_heads()) + ") and tp (" + n(tp) +
              ") must divide one another: key/value heads are split over the tensor-parallel ranks, or each "
              "replicated over tp / n_kv_head of them");
  require(m.ffn() % tp == 0, "ffn_dim (" + n(m.ffn()) + ") is not divisible by tp (" + n(tp) +
                                 "): the MLP's hidden columns are split over the tensor-parallel ranks");
  require(m.vocab_padded() % tp == 0, "the padded vocabulary (" + n(m.vocab_padded()) +
                                          ") is not divisible by tp (" + n(tp) +
                                          "): set --padded-vocab-size to a multiple of tp");
}

template <class F> void GPT::for_each_run(F&& f) const {
  const std::size_t r = std::size_t(tp_->rank()), k = std::size_t(tp_->size());
  for (std::size_t i = 0; i < layout_.size(); ++i) {
    const auto &t = layout_[i], &w = whole_[i];
    if (t.size == 0) continue;  // not on this pipeline stage
    const std::size_t layers = t.layers(), Rl = t.rows(), Cl = t.cols(), Rw = w.rows(), Cw = w.cols();
    const std::size_t l0 = t.per_layer ? std::size_t(stage_.first_layer) : 0;
    // Split::rows: local row -> whole row, block by block, and whether this rank owns it (the
    // first rank of a block's replicas does).
    std::vector<std::size_t> whole_row(t.split == Split::rows ? Rl : 0);
    std::vector<char> row_owner(whole_row.size(), 1);
    if (t.split == Split::rows) {
      std::size_t a = 0, w0 = 0;
      for (const auto& blk : t.row_blocks) {  // this layout's blocks: whole rows, and replicas at this tp
        const std::size_t rep = std::size_t(blk.replicas), bl = std::size_t(blk.rows) * rep / k;
        for (std::size_t j = 0; j < bl; ++j, ++a) {
          whole_row[a] = w0 + (r / rep) * bl + j;
          row_owner[a] = r % rep == 0;
        }
        w0 += std::size_t(blk.rows);
      }
    }
    const std::size_t col0 = t.split == Split::cols ? r * Cl : 0;
    // 1-D tensors (biases, gains) are one run per layer, the others one run per row.
    const bool vector = !t.matrix() && t.split != Split::rows;
    for (std::size_t l = 0; l < layers; ++l) {
      if (vector) {
        f(i, t.offset + l * Rl, w.offset + (l0 + l) * Rw, Rl, t.split == Split::cols || r == 0);
        continue;
      }
      for (std::size_t a = 0; a < Rl; ++a) {
        const std::size_t ga = t.split == Split::rows ? whole_row[a] : a;
        const bool owner = t.split == Split::none ? r == 0 : t.split == Split::cols || row_owner[a] != 0;
        f(i, t.offset + (l * Rl + a) * Cl, w.offset + ((l0 + l) * Rw + ga) * Cw + col0, Cl, owner);
      }
    }
  }
}

template <class F> void GPT::for_each_element(F&& f) const {
  for_each_run([&](std::size_t i, std::size_t lo, std::size_t wo, std::size_t n, bool owner) {
    for (std::size_t c = 0; c < n; ++c) f(i, lo + c, wo + c, owner);
  });
}

void GPT::load_params_from(const std::function<void(std::size_t, std::size_t, float*)>& read) {
  std::vector<float> part(n_params_, 0.0f);
  for_each_run([&](std::size_t, std::size_t lo, std::size_t wo, std::size_t n, bool) { read(wo, n, part.data() + lo); });
  Kokkos::deep_copy(params_, 0.0f);
  Kokkos::View<const float*, Layout, HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> h(part.data(), part.size());
  Kokkos::deep_copy(View1<float>(params_.data(), n_params_), h);
}

std::vector<FlatRun> GPT::part_runs(bool owned) const {
  std::vector<FlatRun> runs;
  const int wte = slot_.wte;
  for_each_run([&](std::size_t i, std::size_t lo, std::size_t wo, std::size_t n, bool owner) {
    const bool tied_copy = !stage_.embed && int(i) == wte;  // the last stage's copy of wte
    if (owned && (!owner || tied_copy)) return;
    if (!runs.empty() && runs.back().local + runs.back().n == lo && runs.back().whole + runs.back().n == wo)
      runs.back().n += n;
    else
      runs.push_back({wo, lo, n});
  });
  return runs;
}

std::vector<float> GPT::take_part(const std::vector<float>& whole) const {
  require(whole.size() == n_whole_, "take_part: parameter count mismatch");
  std::vector<float> part(n_params_);
  for_each_element([&](std::size_t, std::size_t l, std::size_t w, bool) { part[l] = whole[w]; });
  return part;
}

std::vector<float> GPT::gather_whole(View1<float> local) const {
  const auto h = Kokkos::create_mirror_view_and_copy(HostSpace(), local);
  std::vector<float> whole(n_whole_, 0.0f);
  const int wte = slot_.wte;  // replicated elements: from their owner, so the sum counts them once
  for_each_element([&](std::size_t i, std::size_t l, std::size_t w, bool owner) {
    const bool tied_copy = !stage_.embed && int(i) == wte;  // the last stage's copy of wte
    if (!tied_copy && owner) whole[w] = h(l);
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
      tiled_(options.tiled_attention), bf16_att_(options.bf16_attention && !options.tiled_attention) {
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
  auto& s = slot_;
  for (auto [slot, name] : {std::pair{&s.wte, "wte"}, {&s.wpe, "wpe"}, {&s.ln1w, "ln1w"}, {&s.ln1b, "ln1b"},
                            {&s.qkvw, "qkvw"}, {&s.qkvb, "qkvb"}, {&s.qnorm, "qnormw"}, {&s.knorm, "knormw"},
                            {&s.attprojw, "attprojw"}, {&s.attprojb, "attprojb"}, {&s.ln2w, "ln2w"},
                            {&s.ln2b, "ln2b"}, {&s.fcw, "fcw"}, {&s.fcb, "fcb"}, {&s.fcprojw, "fcprojw"},
                            {&s.fcprojb, "fcprojb"}, {&s.xielu, "xielu"}, {&s.lnfw, "lnfw"}, {&s.lnfb, "lnfb"},
                            {&s.lm_head, "lm_head"}})
    *slot = find_tensor(layout_, name);
  s.output = s.lm_head >= 0 ? s.lm_head : s.wte;  // the output layer: untied, or the token embedding
  require(T <= cfg_.max_seq_len, "seq_len (" + std::to_string(T) + ") is above the model's max_seq_len (" +
                                     std::to_string(cfg_.max_seq_len) + ")");
  n_params_ = layout_.back().offset + layout_.back().size;
  const std::size_t pad = pad_multiple > 0 ? pad_multiple : 1;
  const std::size_t n = (n_params_ + pad - 1) / pad * pad;
  params_ = View1<float>("tapestry::params", n);
  grads_ = View1<float>("tapestry::grads", n);
  const int N = B * T, C = cfg_.d_model, Cl = C / k, NHl = cfg_.n_head / k, Vl = cfg_.vocab_padded() / k;
  const int hd = cfg_.head_dim();
  nkv_ = std::max(1, cfg_.kv_heads() / k), ffn_ = cfg_.ffn() / k;  // a replicated kv head: one per rank
  const int W = (NHl + 2 * nkv_) * hd, up = (cfg_.mlp == "swiglu" ? 2 : 1) * ffn_;
  const int Nc = sp_ ? N / k : N;
  const bool layernorm = cfg_.norm == "layernorm";
  rows_ = Nc;
  // A chunk view: its own (Nc, C) buffer with sequence parallelism, else the full view itself.
  auto chunk_of = [&](const View2<float>& full, const char* name) {
    return sp_ ? View2<float>(std::string(name), std::size_t(Nc), std::size_t(C)) : full;
  };
  tokens_ = TokenView("tapestry::tokens", B, T);
  targets_ = decltype(targets_)("tapestry::targets", N);
  // Only the first stage embeds and only the last holds the output layer's buffers; a later
  // stage's input (the previous stage's output) is a token chunk of its own.
  if (stage_.embed) {
    emb_full_ = View2<float>("tapestry::embedding_partial", N, C);
    encoded_ = chunk_of(emb_full_, "tapestry::encoded");
  } else {
    encoded_ = View2<float>("tapestry::stage_input", Nc, C);
  }
  if (stage_.head) {
    lnf_ = View2<float>("tapestry::lnf", N, C);
    lnfc_ = chunk_of(lnf_, "tapestry::lnf_chunk");
    logit_rows_ = int(output_chunk_rows(N, C, Vl));
    logits_ = View2<float>("tapestry::logits", logit_rows_, Vl);
    if (layernorm) lnf_mean_ = View1<float>("tapestry::lnf_mean", Nc);
    lnf_rstd_ = View1<float>("tapestry::lnf_rstd", Nc);
    losses_ = View1<float>("tapestry::losses", N);
  }
  layers_.resize(std::size_t(stage_.num_layers));
  // With sequence parallelism a layer keeps only its norm outputs' token chunks; the full inputs
  // of the split layers are all-gathered into one shared buffer, again in backward.
  if (sp_) ln_full_ = View2<float>("tapestry::ln_full", N, C);
  // A layer's tensors kept for backward...
  stash_ = options.bf16_activations && !layers_.empty();
  lin16_ = options.bf16_linear_inputs && !stash_ && !layers_.empty();
  auto make_saved = [&](LayerActs& a) {  // (bf16_linear_inputs: those with a copy get views below)
    a.ln1 = sp_ ? ln_full_ : lin16_ ? View2<float>() : View2<float>("tapestry::ln1", N, C);
    a.ln1c = lin16_ ? a.ln1 : chunk_of(a.ln1, "tapestry::ln1_chunk");
    a.qkv = View2<float>("tapestry::qkv", N, W);
    a.qkv_raw = cfg_.qk_norm ? View2<float>("tapestry::qkv_raw", N, W) : a.qkv;
    if (!lin16_ || tiled_) a.atty = View2<float>("tapestry::atty", N, Cl);
    a.ln2 = sp_ ? ln_full_ : lin16_ ? View2<float>() : View2<float>("tapestry::ln2", N, C);
    a.ln2c = lin16_ ? a.ln2 : chunk_of(a.ln2, "tapestry::ln2_chunk");
    a.fch = View2<float>("tapestry::fch", N, up);
    if (!lin16_) a.fch_act = View2<float>("tapestry::fch_act", N, ffn_);
    if (!tiled_ && !bf16_att_) a.att = View4<float>("tapestry::att", B, NHl, T, T);
  };
  // ...and its own in any case: the norms' statistics, the log-sum-exp.
  auto make_own = [&](LayerActs& a) {
    if (layernorm) a.ln1_mean = View1<float>("tapestry::ln1_mean", Nc);
    a.ln1_rstd = View1<float>("tapestry::ln1_rstd", Nc);
    if (layernorm) a.ln2_mean = View1<float>("tapestry::ln2_mean", Nc);
    a.ln2_rstd = View1<float>("tapestry::ln2_rstd", Nc);
    if (cfg_.qk_norm) {
      a.q_rstd = View2<float>("tapestry::q_rstd", N, NHl);
      a.k_rstd = View2<float>("tapestry::k_rstd", N, nkv_);
    }
    if (tiled_) a.lse = View3<float>("tapestry::attention_lse", B, NHl, T);
  };
  // The residual stream: per layer, or (bf16_activations) res3 in one buffer shared by the layers,
  // also the next layer's input and overwritten by its res3, and res2 in free buffers (below).
  const View2<float> res3 = stash_ ? View2<float>("tapestry::res3", Nc, C) : View2<float>();
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    auto& a = layers_[l];
    if (stash_) {
      a.res3 = res3;
      auto& c = copies_.emplace_back();
      auto half = [](std::size_t rows, std::size_t cols) { return Half("tapestry::activations_bf16", rows * cols); };
      c.ln1c = half(Nc, C), c.ln2c = half(Nc, C), c.qkv = half(N, W), c.atty = half(N, Cl);
      if (cfg_.qk_norm) c.qkv_raw = half(N, W);
      c.fch = half(N, up), c.fch_act = half(N, ffn_);
      if (!tiled_) c.att = half(std::size_t(B) * std::size_t(NHl) * std::size_t(T), T);
      c.res2 = half(Nc, C);
      if (l + 1 < layers_.size()) c.res3 = half(Nc, C);
    } else {
      make_saved(a);
      if (bf16_att_) probs16_.emplace_back("tapestry::attention_probs_bf16", std::size_t(B) * NHl * std::size_t(T) * T);
      a.res2 = View2<float>("tapestry::res2", Nc, C);
      a.res3 = View2<float>("tapestry::res3", Nc, C);
    }
    make_own(a);
  }
  proj_ = View2<float>("tapestry::proj", N, C);
  projc_ = chunk_of(proj_, "tapestry::proj_chunk");
  dres_ = View2<float>("tapestry::dresidual", Nc, C);
  dresf_ = sp_ ? View2<float>("tapestry::dresidual_full", N, C) : dres_;
  dtmp_ = View2<float>("tapestry::dtmp", N, C);
  dtmpc_ = chunk_of(dtmp_, "tapestry::dtmp_chunk");
  norm_scratch_ = View2<float>("tapestry::norm_scratch", kernels::norm_scratch_rows(std::size_t(Nc)), 2 * std::size_t(C));
  dbig_ = View2<float>("tapestry::dfch", N, up);
  dact_ = up == ffn_ ? dbig_ : View2<float>("tapestry::dfch_act", N, ffn_);
  dqkv_ = View2<float>("tapestry::dqkv", N, W);
  datty_ = View2<float>("tapestry::datty", N, Cl);
  if (lin16_)  // each layer's copies; the fp32 values in the backward scratch, free in the forward
    for (auto& a : layers_) {
      auto& c = copies_.emplace_back();
      auto half = [](std::size_t rows, std::size_t cols) { return Half("tapestry::linear_inputs_bf16", rows * cols); };
      c.ln1c = half(Nc, C), c.ln2c = half(Nc, C), c.fch_act = half(N, ffn_);
      a.ln1c = a.ln2c = dtmpc_;
      if (!sp_) a.ln1 = a.ln2 = dtmp_;
      a.fch_act = View2<float>(dact_.data(), N, ffn_);
      if (!tiled_) c.atty = half(N, Cl), a.atty = datty_;
    }
  if (stash_) {
    // bf16_activations: the layers compute in fp32 in buffers that are free at the time. The
    // forward (which leaves the backward scratch unused) writes into the backward scratch and one
    // pool (res2 in dres, which the backward or the next pipeline stage fills after the forward);
    // the backward reads each tensor back into the pool just before it needs it (the attention
    // output into dtmp, free then: the tiled backward needs it beside q/k/v).
    pool_ = View1<float>("tapestry::activations_fp32", std::size_t(N) * std::size_t(std::max({up, W, C})));
    auto pool = [&](int rows, int cols) { return View2<float>(pool_.data(), rows, cols); };
    fwd_.ln1c = fwd_.ln2c = dtmpc_;
    fwd_.ln1 = fwd_.ln2 = sp_ ? ln_full_ : dtmp_;
    fwd_.qkv_raw = dqkv_;
    fwd_.qkv = cfg_.qk_norm ? pool(N, W) : dqkv_;
    fwd_.atty = datty_, fwd_.fch = dbig_, fwd_.fch_act = pool(N, ffn_), fwd_.res2 = dres_;
    bwd_.fch_act = pool(N, ffn_), bwd_.fch = pool(N, up);
    bwd_.ln1c = bwd_.ln2c = pool(Nc, C);
    bwd_.ln1 = bwd_.ln2 = sp_ ? ln_full_ : bwd_.ln1c;
    bwd_.atty = View2<float>(dtmp_.data(), N, Cl);
    bwd_.qkv = bwd_.qkv_raw = pool(N, W);
    bwd_.res2 = pool(Nc, C);
    if (!tiled_) fwd_.att = bwd_.att = View4<float>("tapestry::att", 1, NHl, T, T);  // one sequence
  }
  if (!tiled_) datt_ = View4<float>("tapestry::datt", stash_ ? 1 : B, NHl, T, T);
  if (bf16_att_) {  // the forward's fp32 scores go to datt_ (free then) without bf16_activations
    if (!stash_) qkv16_ = Half("tapestry::qkv_bf16", std::size_t(N) * W);
    dout16_ = Half("tapestry::datty_bf16", std::size_t(N) * Cl);
    // the scores' gradient: with bf16_activations in the one-sequence fp32 buffer the forward's
    // scores use (the backward reads the probabilities from their copy, not from there)
    ds16_ = stash_ ? Half(reinterpret_cast<std::uint16_t*>(fwd_.att.data()), datt_.span())
                   : Half("tapestry::dscores_bf16", datt_.span());
  }
  if (k > 1 && stage_.head) xent_stats_ = View3<float>("tapestry::xent_stats", k, logit_rows_, 3);
  if (cfg_.doc_mask) doc_pos_ = decltype(doc_pos_)("tapestry::document_positions", N);
  if (cfg_.positions == "rope") {
    pos_ = cfg_.doc_mask ? doc_pos_ : decltype(pos_)("tapestry::positions", N);  // restart at each document
    fill_positions(pos_, T);
    kernels::RopeScaling sc;
    sc.llama3 = cfg_.rope_scaling == "llama3";
    sc.factor = cfg_.rope_factor, sc.low_freq_factor = cfg_.rope_low_freq_factor;
    sc.high_freq_factor = cfg_.rope_high_freq_factor, sc.original_context = cfg_.rope_original_context;
    const auto f = kernels::rope_inv_freq(hd, cfg_.rope_theta, sc);
    Kokkos::View<double*, Layout, MemSpace> inv_freq("tapestry::rope_inv_freq", f.size());
    Kokkos::View<const double*, Layout, HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> hf(f.data(), f.size());
    Kokkos::deep_copy(inv_freq, hf);
    rope_cos_ = View2<float>("tapestry::rope_cos", T, f.size());  // positions stay below T
    rope_sin_ = View2<float>("tapestry::rope_sin", T, f.size());
    kernels::rope_table<float>(ExecSpace(), rope_cos_, rope_sin_, inv_freq);
    ExecSpace().fence();
  }
  // Gradients that are partial sums over the TP group: QK-norm and xIELU parameters (each rank
  // sees its own heads / MLP columns), and with sequence parallelism the norms (token chunks).
  // A kv head replicated over tp / n_kv_head ranks: each sees only its own q heads' share of the
  // k and v rows' gradients, summed over the replicas; the non-first replicas' copies are
  // duplicates for the gradient norm.
  std::size_t partial = 0;
  for (std::size_t i = 0; i < layout_.size(); ++i)
    if (layout_[i].size > 0 && k > 1 && (layout_[i].tp_partial || (sp_ && layout_[i].token_partial))) {
      partial_.push_back({layout_[i].offset, layout_[i].size, k});
      partial += layout_[i].size;
    }
  const int rep = layout_[std::size_t(slot_.qkvw)].row_blocks[1].replicas;  // the k block's
  if (rep > 1)
    for (int idx : {slot_.qkvw, slot_.qkvb}) {
      if (idx < 0 || layout_[std::size_t(idx)].size == 0) continue;
      const auto& t = layout_[std::size_t(idx)];
      const std::size_t q = std::size_t(NHl) * std::size_t(hd) * t.cols(), kv = 2 * std::size_t(hd) * t.cols();
      for (std::size_t l = 0; l < t.layers(); ++l) {
        const std::size_t off = t.offset + l * t.layer_size() + q;
        partial_.push_back({off, kv, rep});
        partial += kv;
        if (tp_->rank() % rep != 0) duplicates_.emplace_back(off, off + kv);
      }
    }
  if (partial > 0) partial_saved_ = View1<float>("tapestry::partial_grad_saved", partial);
  if (const auto& w = layout_[std::size_t(slot_.wte)]; !stage_.embed && w.size > 0)  // the tied copy
    duplicates_.emplace_back(w.offset, w.offset + w.size);
  std::sort(duplicates_.begin(), duplicates_.end());
}

const ParamTensor* GPT::tied_embedding() const {
  if (!cfg_.tie_embeddings || stage_.whole()) return nullptr;
  const auto& t = layout_[std::size_t(slot_.wte)];
  return t.size > 0 ? &t : nullptr;
}

View2<float> GPT::p2(const View1<float>& flat, int idx, int layer) const {
  const auto& t = layout_[std::size_t(idx)];
  const auto r = t.shape.size();
  const std::int64_t d0 = t.shape[r - 2], d1 = t.shape[r - 1];
  return View2<float>(flat.data() + t.offset + std::size_t(layer) * std::size_t(d0 * d1), d0, d1);
}

View1<float> GPT::p1(const View1<float>& flat, int idx, int layer) const {
  if (idx < 0) return View1<float>();
  const auto& t = layout_[std::size_t(idx)];
  const std::int64_t d = t.shape.back();
  return View1<float>(flat.data() + t.offset + std::size_t(layer) * std::size_t(d), d);
}

void GPT::init_random(std::uint64_t seed) {
  // Counter-based: the value of whole-model element w is a function of (seed, w) alone - a
  // Box-Muller pair from two splitmix64 words of w - so every rank computes just its own part
  // (nothing holds the whole model) and every layout, build and device starts from the same
  // weights. (Box-Muller has no rejection loop, so a last-bit difference between compilers stays
  // in its own value.)
  auto word = [seed](std::uint64_t x) {
    x += seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
  };
  auto uniform = [&](std::uint64_t x) { return (double(word(x) >> 11) + 0.5) * 0x1p-53; };  // (0, 1), never 0
  const double resid_std = 0.02 / std::sqrt(2.0 * double(cfg_.n_layer));
  const float xielu_p = float(kernels::softplus_inverse(0.8)), xielu_n = float(kernels::softplus_inverse(0.8 - 0.5));
  const std::size_t vocab_rows = std::size_t(cfg_.vocab_size) * std::size_t(cfg_.d_model);
  auto value = [&](const ParamTensor& t, std::size_t w) {
    const std::size_t j = w - t.offset;
    if (t.init == Init::one) return 1.0f;
    if (t.init == Init::xielu_alpha) return j % 2 == 0 ? xielu_p : xielu_n;
    if (!t.decay || (t.vocab_rows && j >= vocab_rows)) return 0.0f;  // padded vocabulary rows stay 0
    const double std = t.init == Init::normal_residual ? resid_std : 0.02;
    const double u1 = uniform(2 * std::uint64_t(w)), u2 = uniform(2 * std::uint64_t(w) + 1);
    return float(std * std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  };
  load_params_from([&](std::size_t w0, std::size_t n, float* dst) {
    // the whole tensor that holds w0 (whole_ is in offset order); a run never crosses tensors
    auto it = std::upper_bound(whole_.begin(), whole_.end(), w0,
                               [](std::size_t w, const ParamTensor& t) { return w < t.offset; });
    const ParamTensor& t = *(it - 1);
    for (std::size_t k = 0; k < n; ++k) dst[k] = value(t, w0 + k);
  });
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
                  (dact_.data() != dbig_.data() ? dact_.span() : 0) + dqkv_.span() + datty_.span() + datt_.span() +
                  xent_stats_.span() + partial_saved_.span() + norm_scratch_.span();
  if (sp_ || !stage_.embed) n += encoded_.span();
  if (sp_) n += lnfc_.span() + projc_.span() + dresf_.span() + dtmpc_.span() + ln_full_.span();
  std::size_t half = qkv16_.span() + dout16_.span() + (stash_ ? 0 : ds16_.span());  // bf16 copies
  for (const auto& h : probs16_) half += h.span();
  if (stash_) n += pool_.span() + fwd_.att.span() + layers_[0].res3.span();  // shared
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    const auto& a = layers_[l];
    n += a.ln1_mean.span() + a.ln1_rstd.span() + a.ln2_mean.span() + a.ln2_rstd.span() + a.q_rstd.span() +
         a.k_rstd.span() + a.lse.span();
    if (!copies_.empty()) {  // each layer's copies (bf16_linear_inputs: those four only)
      const auto& c = copies_[l];
      for (const Half* h : {&c.ln1c, &c.qkv_raw, &c.qkv, &c.atty, &c.ln2c, &c.fch, &c.fch_act, &c.att, &c.res2, &c.res3})
        half += h->span();
    }
    if (stash_) continue;
    n += a.res2.span() + a.res3.span();
    n += a.qkv.span() + (a.qkv_raw.data() != a.qkv.data() ? a.qkv_raw.span() : 0) + a.fch.span() + a.att.span();
    if (!lin16_) n += (sp_ ? a.ln1c.span() + a.ln2c.span() : a.ln1.span() + a.ln2.span()) + a.fch_act.span();
    if (!lin16_ || tiled_) n += a.atty.span();
  }
  return n * sizeof(float) + half * sizeof(std::uint16_t) +
         (tokens_.span() + targets_.span() + pos_.span() + doc_pos_.span()) * sizeof(int) + (rope_cos_.span() + rope_sin_.span()) * sizeof(float);
}

kernels::AttentionBf16 GPT::att16(int l, int b) const {
  kernels::AttentionBf16 h;
  h.dout = dout16_, h.dscores = ds16_;
  if (!stash_) {
    h.qkv = qkv16_, h.probs = probs16_[std::size_t(l)];
    return h;
  }
  const LayerCopies& c = copies_[std::size_t(l)];
  const std::size_t seq_qkv = c.qkv.span() / std::size_t(B_), seq_att = c.att.span() / std::size_t(B_);
  h.qkv = half_of(c.qkv, std::size_t(b) * seq_qkv, seq_qkv), h.qkv_written = true;
  h.probs = half_of(c.att, std::size_t(b) * seq_att, seq_att);
  return h;
}

void GPT::norm_forward(const ExecSpace& ex, View2<float> out, View1<float> mean, View1<float> rstd,
                       View2<float> inp, int w, int b, int layer) {
  if (cfg_.norm == "rmsnorm")
    kernels::rmsnorm_forward(ex, out, rstd, inp, p1(params_, w, layer), cfg_.norm_eps);
  else if (b >= 0)
    kernels::layernorm_forward(ex, out, mean, rstd, inp, p1(params_, w, layer), p1(params_, b, layer), cfg_.norm_eps);
  else  // LayerNorm without bias: a zero bias, its gradient discarded
    kernels::layernorm_forward(ex, out, mean, rstd, inp, p1(params_, w, layer), zero_bias(out.extent(1)), cfg_.norm_eps);
}

View1<float> GPT::zero_bias(std::size_t n) {
  if (ln_zero_bias_.extent(0) != n) ln_zero_bias_ = View1<float>("tapestry::ln_zero_bias", n);
  return ln_zero_bias_;
}

void GPT::norm_backward(const ExecSpace& ex, View2<float> dinp, View2<float> dout, View2<float> inp,
                        View1<float> mean, View1<float> rstd, int w, int b, int layer) {
  if (cfg_.norm == "rmsnorm") {
    kernels::rmsnorm_backward(ex, dinp, p1(grads_, w, layer), dout, inp, p1(params_, w, layer), rstd, norm_scratch_);
  } else if (b >= 0) {
    kernels::layernorm_backward(ex, dinp, p1(grads_, w, layer), p1(grads_, b, layer), dout, inp,
                                p1(params_, w, layer), mean, rstd, norm_scratch_);
  } else {
    if (ln_bias_grad_.extent(0) != dout.extent(1)) ln_bias_grad_ = View1<float>("tapestry::ln_bias_grad", dout.extent(1));
    kernels::layernorm_backward(ex, dinp, p1(grads_, w, layer), ln_bias_grad_, dout, inp, p1(params_, w, layer),
                                mean, rstd, norm_scratch_);
  }
}

void GPT::require_bf16_products(const kernels::Blas& blas) const {
  require(!lin16_ || blas.precision() == Precision::bf16,
          "GPT: the model keeps linear layers' inputs in bf16 (bf16_linear_inputs), which needs bf16 products");
}

bool GPT::reads_copy(const kernels::Blas& blas, const View2<float>& v, const Half& h) const {
  return !copies_.empty() && blas.precision() == Precision::bf16 && h.span() > 0 && h.span() == v.span();
}

std::optional<kernels::Blas::Given> GPT::read_copy(const kernels::Blas& blas, const View2<float>& v,
                                                  const Half& h) const {
  if (!reads_copy(blas, v, h)) return std::nullopt;
  return blas.given(v.data(), v.span(), h.data());
}

void GPT::norm_forward_bf16(const ExecSpace& ex, std::uint16_t* out, View1<float> mean, View1<float> rstd,
                            View2<float> inp, int w, int b, int layer) {
  if (cfg_.norm == "rmsnorm")
    kernels::rmsnorm_forward_bf16(ex, out, rstd, inp, p1(params_, w, layer), cfg_.norm_eps);
  else
    kernels::layernorm_forward_bf16(ex, out, mean, rstd, inp, p1(params_, w, layer),
                                    b >= 0 ? p1(params_, b, layer) : zero_bias(inp.extent(1)), cfg_.norm_eps);
}

template <class W> void GPT::activation_forward(const ExecSpace& ex, View2<float> out, View2<float> in, int l, W* y) {
  using namespace kernels;
  if (cfg_.mlp == "swiglu") {
    y ? swiglu_forward_bf16(ex, y, in) : swiglu_forward(ex, out, in);
  } else if (cfg_.mlp == "xielu") {
    const auto a = p1(params_, slot_.xielu, l);
    y ? xielu_forward_bf16(ex, y, as1(in), a) : xielu_forward(ex, as1(out), as1(in), a);
  } else {
    y ? gelu_forward_bf16(ex, y, as1(in)) : gelu_forward(ex, as1(out), as1(in));
  }
}

template <class W>
void GPT::activation_backward(const ExecSpace& ex, View2<float> din, View2<float> in, View2<float> dout, int l, W* y) {
  using namespace kernels;
  if (cfg_.mlp == "swiglu") {
    y ? swiglu_backward_bf16(ex, y, in, dout) : swiglu_backward(ex, din, in, dout);
  } else if (cfg_.mlp == "xielu") {
    const auto a = p1(params_, slot_.xielu, l), da = p1(grads_, slot_.xielu, l);
    y ? xielu_backward_bf16(ex, y, da, as1(in), as1(dout), a) : xielu_backward(ex, as1(din), da, as1(in), as1(dout), a);
  } else {
    y ? gelu_backward_bf16(ex, y, as1(in), as1(dout)) : gelu_backward(ex, as1(din), as1(in), as1(dout));
  }
}

double GPT::forward(const kernels::Blas& blas, const std::vector<int>& inputs, const std::vector<int>& targets,
                    std::optional<double> loss_scale) {
  using namespace kernels;
  const auto& ex = blas.exec();
  require_bf16_products(blas);
  const int k = tp_->size(), N = B_ * T_, C = cfg_.d_model, Cl = C / k, NHl = cfg_.n_head / k, hd = cfg_.head_dim();
  const int W = (NHl + 2 * nkv_) * hd;
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
    // Documents end at eod_token: positions restart after it (attention mask, RoPE), and with
    // eod_mask_loss the token after it is not predicted (target -1: no loss, no gradient).
    const std::int64_t eod = cfg_.eod_token;
    std::vector<int> masked;
    if (cfg_.eod_mask_loss) {
      masked = targets;
      for (std::size_t i = 0; i < masked.size(); ++i)
        if (inputs[i] == eod) masked[i] = -1;
    }
    const std::vector<int>& tg = cfg_.eod_mask_loss ? masked : targets;
    Kokkos::View<const int*, Layout, HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> ht(tg.data(), N);
    Kokkos::deep_copy(ex, targets_, ht);
    if (cfg_.doc_mask) {
      std::vector<int> dpos(static_cast<std::size_t>(N));
      for (int b = 0; b < B_; ++b)
        for (int t = 0; t < T_; ++t) {
          const std::size_t i = std::size_t(b) * std::size_t(T_) + std::size_t(t);
          dpos[i] = t == 0 || inputs[i - 1] == eod ? 0 : dpos[i - 1] + 1;
        }
      Kokkos::View<const int*, Layout, HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> hp(dpos.data(), N);
      Kokkos::deep_copy(ex, doc_pos_, hp);
    }
  }
  const auto& P = params_;
  const auto& S = slot_;
  // Megatron's communication around the split layers; with sequence parallelism the full (BT, C)
  // tensors meet the token chunks through all-gather / reduce-scatter instead of all-reduce.
  auto into_chunk = [&](View2<float> full, View2<float> chunk) {  // g: partial sums -> summed chunk
    if (sp_) reduce_scatter_to_sequence_region(*tp_, full, chunk);
    else reduce_from_tp_region_forward(*tp_, full);
  };
  auto into_full = [&](View2<float> chunk, View2<float> full) {  // f: chunk -> full input
    if (sp_) gather_from_sequence_region(*tp_, chunk, full);
  };
  if (layer_begin_) layer_begin_(-1);
  if (stage_.embed) {
    const bool learned = S.wpe >= 0;
    embedding_forward(ex, View3<float>(emb_full_.data(), B_, T_, C), tokens_, p2(P, S.wte),
                      learned ? In2<float>(p2(P, S.wpe)) : In2<float>(), v0, lead && learned);
    into_chunk(emb_full_, encoded_);  // vocabulary-parallel embedding
  }
  View2<float> x = encoded_;
  for (int l = 0; l < stage_.num_layers; ++l) {
    if (layer_begin_) layer_begin_(l);
    auto& a = layers_[std::size_t(l)];
    const LayerActs& w = stash_ ? fwd_ : a;  // where the layer computes
    const LayerCopies* c = copies_.empty() ? nullptr : &copies_[std::size_t(l)];
    auto keep = [&](Half LayerCopies::*h, const View2<float>& v) {  // the copy backward reads, if kept
      if (c != nullptr && (c->*h).extent(0) > 0) store_bf16(ex, c->*h, View1<float>(v.data(), v.span()));
    };
    // A linear layer's input whose copy its products read (reads_copy): the kernel that makes it
    // writes that copy only, not the floats (bitwise the floats rounded); copy() gives it to them.
    const auto direct = [&](const View2<float>& v, Half LayerCopies::*h) -> std::uint16_t* {
      return c != nullptr && reads_copy(blas, v, c->*h) ? (c->*h).data() : nullptr;
    };
    const auto copy = [&](const View2<float>& v, Half LayerCopies::*h) {
      return c != nullptr ? read_copy(blas, v, c->*h) : std::nullopt;
    };
    // A norm in front of a linear layer: straight into its copy, or into the floats (this rank's
    // chunk under SP), kept and gathered.
    const auto norm_input = [&](const View2<float>& full, const View2<float>& chunk, Half LayerCopies::*h,
                                View1<float> mean, View1<float> rstd, const View2<float>& in, int wslot, int bslot) {
      if (auto* y = direct(full, h)) return norm_forward_bf16(ex, y, mean, rstd, in, wslot, bslot, l);
      norm_forward(ex, chunk, mean, rstd, in, wslot, bslot, l);
      keep(h, chunk);
      into_full(chunk, full);
    };
    norm_input(w.ln1, w.ln1c, &LayerCopies::ln1c, a.ln1_mean, a.ln1_rstd, x, S.ln1w, S.ln1b);
    // Attention: column-parallel QKV (this rank's q and kv heads), row-parallel output projection.
    {
      const auto g = copy(w.ln1, &LayerCopies::ln1c);
      matmul_forward(blas, w.qkv_raw, w.ln1, p2(P, S.qkvw, l), p1(P, S.qkvb, l));
    }
    if (cfg_.qk_norm) {  // per-head RMSNorm of q and k; v passes through
      Kokkos::deep_copy(ex, w.qkv, w.qkv_raw);
      head_rmsnorm_forward(ex, w.qkv, a.q_rstd, w.qkv_raw, p1(P, S.qnorm, l), 0, NHl, cfg_.norm_eps);
      head_rmsnorm_forward(ex, w.qkv, a.k_rstd, w.qkv_raw, p1(P, S.knorm, l), NHl * hd, nkv_, cfg_.norm_eps);
      keep(&LayerCopies::qkv_raw, w.qkv_raw);
    }
    if (pos_.extent(0) > 0) rope_apply(ex, w.qkv, pos_, rope_cos_, rope_sin_, 0, NHl + nkv_, hd, false);  // q and k heads
    keep(&LayerCopies::qkv, w.qkv);
    if (tiled_)
      attention_tiled_forward<float>(ex, View3<float>(w.atty.data(), B_, T_, Cl), a.lse,
                                     View3<float>(w.qkv.data(), B_, T_, W), NHl, nkv_, doc_pos_);
    else if (bf16_att_ && stash_)  // one sequence at a time: its probabilities straight into their copy
      for (int b = 0; b < B_; ++b) {
        const std::size_t tb = std::size_t(b) * std::size_t(T_);
        attention_forward_bf16(blas, View3<float>(rows_of(w.atty, tb, T_).data(), 1, T_, Cl), w.att, att16(l, b),
                               View3<float>(rows_of(w.qkv, tb, T_).data(), 1, T_, W), NHl, nkv_,
                               doc_pos_.extent(0) > 0 ? In1<int>(doc_pos_.data() + tb, T_) : In1<int>());
      }
    else if (bf16_att_)
      attention_forward_bf16(blas, View3<float>(w.atty.data(), B_, T_, Cl), datt_, att16(l, 0),
                             View3<float>(w.qkv.data(), B_, T_, W), NHl, nkv_, doc_pos_);
    else if (stash_)  // one sequence at a time: its probabilities into their bf16 copy
      for (int b = 0; b < B_; ++b) {
        const std::size_t tb = std::size_t(b) * std::size_t(T_);
        attention_forward(blas, View3<float>(rows_of(w.atty, tb, T_).data(), 1, T_, Cl), w.att,
                          View3<float>(rows_of(w.qkv, tb, T_).data(), 1, T_, W), NHl, nkv_,
                          doc_pos_.extent(0) > 0 ? In1<int>(doc_pos_.data() + tb, T_) : In1<int>());
        store_bf16(ex, half_of(c->att, std::size_t(b) * w.att.span(), w.att.span()), View1<float>(w.att.data(), w.att.span()));
      }
    else
      attention_forward(blas, View3<float>(w.atty.data(), B_, T_, Cl), w.att, View3<float>(w.qkv.data(), B_, T_, W),
                        NHl, nkv_, doc_pos_);
    keep(&LayerCopies::atty, w.atty);
    {
      const auto g = copy(w.atty, &LayerCopies::atty);
      matmul_forward(blas, proj_, w.atty, p2(P, S.attprojw, l), lead ? p1(P, S.attprojb, l) : View1<float>());
    }
    into_chunk(proj_, projc_);
    residual_forward(ex, as1(w.res2), as1(x), as1(projc_));
    norm_input(w.ln2, w.ln2c, &LayerCopies::ln2c, a.ln2_mean, a.ln2_rstd, w.res2, S.ln2w, S.ln2b);
    // MLP: column-parallel up (and gate) projection, row-parallel down projection.
    {
      const auto g = copy(w.ln2, &LayerCopies::ln2c);
      matmul_forward(blas, w.fch, w.ln2, p2(P, S.fcw, l), p1(P, S.fcb, l));
    }
    keep(&LayerCopies::fch, w.fch);
    {
      auto* y = direct(w.fch_act, &LayerCopies::fch_act);
      activation_forward(ex, w.fch_act, w.fch, l, y);
      if (y == nullptr) keep(&LayerCopies::fch_act, w.fch_act);
    }
    {
      const auto g = copy(w.fch_act, &LayerCopies::fch_act);
      matmul_forward(blas, proj_, w.fch_act, p2(P, S.fcprojw, l), lead ? p1(P, S.fcprojb, l) : View1<float>());
    }
    into_chunk(proj_, projc_);
    residual_forward(ex, as1(a.res3), as1(w.res2), as1(projc_));
    x = a.res3;
    keep(&LayerCopies::res2, w.res2);
    if (c != nullptr && c->res3.extent(0) > 0) keep(&LayerCopies::res3, a.res3);
  }
  if (!stage_.head) return 0.0;
  if (layer_begin_) layer_begin_(stage_.num_layers);
  norm_forward(ex, lnfc_, lnf_mean_, lnf_rstd_, x, S.lnfw, S.lnfb, 0);
  into_full(lnfc_, lnf_);
  head(blas, loss_scale);
  head_scale_ = loss_scale;
  double sum = 0;
  const auto losses = losses_;
  Kokkos::parallel_reduce(
      "tapestry::mean_loss", Kokkos::RangePolicy<ExecSpace>(ex, 0, N),
      KOKKOS_LAMBDA(int i, double& acc) { acc += double(losses(i)); }, sum);
  return sum / N;
}

void GPT::head(const kernels::Blas& blas, std::optional<double> scale) {
  using namespace kernels;
  const auto& ex = blas.exec();
  const int k = tp_->size(), N = B_ * T_;
  const int v0 = tp_->rank() * (cfg_.vocab_padded() / k);  // this rank's first vocabulary row
  const auto &P = params_, &G = grads_;
  const auto& S = slot_;
  // Each chunk: the logits of this rank's vocabulary columns, the cross-entropy (its probabilities
  // in place), then with `scale` the logits' gradient in place and the product's backward.
  for (int r0 = 0; r0 < N; r0 += logit_rows_) {
    const int n = std::min(logit_rows_, N - r0);
    const View2<float> lg = rows_of(logits_, 0, std::size_t(n));
    const View1<float> ls(losses_.data() + r0, n);
    const In1<int> tg(targets_.data() + r0, n);
    const View2<float> x = rows_of(lnf_, std::size_t(r0), std::size_t(n));
    matmul_forward(blas, lg, x, p2(P, S.output), View1<float>());
    // bf16 products: the logits' gradient goes straight into the bf16 copy the two products read
    std::optional<Blas::Held> held;
    if (k == 1 && scale) {  // the losses and the logits' gradient in one kernel
      held.emplace(blas.hold(lg.data(), lg.span()));
      const double d = *scale / N;
      if (held->copy().visit([&](auto* dst) { softmax_xent_fused_bf16(ex, lg, ls, lg, tg, cfg_.vocab_size, d, dst); }))
        held->written();
      else
        softmax_xent_fused(ex, lg, ls, lg, tg, cfg_.vocab_size, d);
    } else if (k == 1) {
      softmax_xent_forward(ex, lg, ls, lg, tg, cfg_.vocab_size);
    } else {  // vocabulary-parallel cross-entropy: 3 numbers per row and rank cross the group
      const View3<float> st(xent_stats_.data(), k, n, 3);
      Kokkos::deep_copy(ex, st, 0.0f);
      xent_shard_stats<float>(ex, Kokkos::subview(st, tp_->rank(), Kokkos::ALL, Kokkos::ALL), lg, tg, cfg_.vocab_size, v0);
      Kokkos::fence();
      tp_->all_reduce_sum(st.data(), st.size());
      xent_shard_finish<float>(ex, lg, ls, lg, st, tg, cfg_.vocab_size, v0);
    }
    if (!scale) continue;
    if (k > 1) softmax_xent_backward(ex, lg, lg, tg, *scale / N, cfg_.vocab_size, v0);
    matmul_backward(blas, rows_of(dtmp_, std::size_t(r0), std::size_t(n)), p2(G, S.output), View1<float>(), lg, x,
                    p2(P, S.output));
  }
}

std::vector<float> GPT::logits(const kernels::Blas& blas) const {
  require(tp_->size() == 1 && stage_.whole(), "logits: needs the whole model on one rank");
  const int N = B_ * T_, V = cfg_.vocab_size, Vp = cfg_.vocab_padded();
  View2<float> out("tapestry::logits_copy", N, Vp);
  kernels::matmul_forward(blas, out, lnf_, p2(params_, slot_.output), View1<float>());
  const auto h = Kokkos::create_mirror_view_and_copy(HostSpace(), out);
  std::vector<float> r(std::size_t(N) * std::size_t(V));
  for (int i = 0; i < N; ++i)
    for (int v = 0; v < V; ++v) r[std::size_t(i) * std::size_t(V) + std::size_t(v)] = h(i, v);
  return r;
}

bool GPT::head_side(int idx) const {
  return idx == slot_.lnfw || idx == slot_.lnfb || (idx == slot_.output && idx != slot_.wte);
}

int GPT::grad_ready_after(std::size_t lo, std::size_t hi) const {
  int ready = stage_.num_layers - 1;
  for (const auto& p : partial_)
    if (p.offset < hi && lo < p.offset + p.size) return -1;  // summed over TP at the end
  for (std::size_t i = 0; i < layout_.size(); ++i) {
    const auto& t = layout_[i];
    if (t.size == 0 || t.offset >= hi || lo >= t.offset + t.size) continue;
    if (t.per_layer) ready = std::min(ready, int((std::max(lo, t.offset) - t.offset) / t.layer_size()));
    else if (!head_side(int(i))) return -1;  // embeddings: at the end
    // (the head's: written in forward(), the output layer's backward, or at the start of backward())
  }
  return ready;
}

int GPT::param_needed_at(std::size_t lo, std::size_t hi) const {
  int need = stage_.num_layers;  // the final norm, an untied output layer, the padding
  for (std::size_t i = 0; i < layout_.size(); ++i) {
    const auto& t = layout_[i];
    if (t.size == 0 || t.offset >= hi || lo >= t.offset + t.size) continue;
    if (t.per_layer) need = std::min(need, int((std::max(lo, t.offset) - t.offset) / t.layer_size()));
    else if (!head_side(int(i))) need = -1;  // embeddings: first
  }
  return need;
}

std::vector<std::pair<std::size_t, std::size_t>> GPT::grad_pieces(std::size_t max_elems) const {
  require(max_elems > 0, "GPT::grad_pieces: pieces of at least one element");
  std::vector<std::pair<std::size_t, std::size_t>> out;
  auto cut = [&](std::size_t lo, std::size_t hi) {
    for (; lo < hi; lo += std::min(max_elems, hi - lo)) out.emplace_back(lo, lo + std::min(max_elems, hi - lo));
  };
  std::size_t at = 0;
  for (const auto& t : layout_) {
    if (t.size == 0) continue;
    require(t.offset == at, "GPT::grad_pieces: the layout has a gap");
    const std::size_t per = t.per_layer ? t.layer_size() : t.size;
    for (std::size_t lo = t.offset; lo < t.offset + t.size; lo += per) cut(lo, lo + per);
    at = t.offset + t.size;
  }
  cut(at, padded_size());
  return out;
}

void GPT::backward(const kernels::Blas& blas, double loss_scale) {
  using namespace kernels;
  const auto& ex = blas.exec();
  require_bf16_products(blas);
  const int k = tp_->size(), Cl = cfg_.d_model / k, NHl = cfg_.n_head / k, hd = cfg_.head_dim();
  const int W = (NHl + 2 * nkv_) * hd;
  const auto &P = params_, &G = grads_;
  const auto& S = slot_;
  // Gradients that are partial sums over the TP group (partial_): this micro-batch's are summed
  // over the group at the end, then the earlier micro-batches' are added back.
  {
    std::size_t saved = 0;
    for (const auto& p : partial_) {
      const View1<float> g(G.data() + p.offset, p.size);
      Kokkos::deep_copy(ex, View1<float>(partial_saved_.data() + saved, p.size), g);
      Kokkos::deep_copy(ex, g, 0.0f);
      saved += p.size;
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
    // The output layer's backward ran in forward(), or runs now (the logits recomputed).
    if (!head_scale_) head(blas, loss_scale);
    else
      require(*head_scale_ == loss_scale, "GPT::backward: loss scale " + std::to_string(loss_scale) +
                                              " differs from the one forward() ran the output layer with (" +
                                              std::to_string(*head_scale_) + ")");
    head_scale_.reset();
    input_grad(dtmp_, dtmpc_);
    Kokkos::deep_copy(ex, dres_, 0.0f);
    norm_backward(ex, dres_, dtmpc_, stage_output(), lnf_mean_, lnf_rstd_, S.lnfw, S.lnfb, 0);
  }  // else dres_ holds d(stage output), from the next stage
  for (int l = stage_.num_layers - 1; l >= 0; --l) {
    auto& a = layers_[std::size_t(l)];
    const LayerActs& w = stash_ ? bwd_ : a;  // where the layer's tensors are read
    const LayerCopies* c = copies_.empty() ? nullptr : &copies_[std::size_t(l)];
    // a tensor kept as a copy (bf16_activations, bf16_linear_inputs) read back just before it is used
    auto fetch = [&](const View2<float>& v, Half LayerCopies::*h, const LayerCopies* from) {
      if (from != nullptr && (from->*h).extent(0) > 0) load_bf16(ex, View1<float>(v.data(), v.span()), from->*h);
    };
    // ... or a linear layer's input that only the weight gradient's product reads: from its copy
    // (read_copy) under bf16 products, else read back.
    auto input = [&](const View2<float>& v, Half LayerCopies::*h) {
      auto g = c != nullptr ? read_copy(blas, v, c->*h) : std::nullopt;
      if (!g) fetch(v, h, c);
      return g;
    };
    // dres holds d(res3): through the MLP.
    output_grad(dres_, dresf_);
    {
      const auto g = input(w.fch_act, &LayerCopies::fch_act);
      matmul_backward(blas, dact_, p2(G, S.fcprojw, l), p1(G, S.fcprojb, l), dresf_, w.fch_act, p2(P, S.fcprojw, l));
    }
    fetch(w.fch, &LayerCopies::fch, c);
    {
      // d(up projection's output) is read only by that layer's products where it has no bias (a bias
      // gradient sums the floats): under bf16 products the activation's backward then writes it
      // straight as the bf16 copy they read (Blas::hold).
      std::optional<Blas::Held> held;
      if (S.fcb < 0) held.emplace(blas.hold(dbig_.data(), dbig_.span()));
      const bool rounded =
          held && held->copy().visit([&](auto* y) { activation_backward(ex, dbig_, w.fch, dact_, l, y); });
      if (rounded) held->written();
      else activation_backward(ex, dbig_, w.fch, dact_, l);
      if (sp_) {
        fetch(w.ln2c, &LayerCopies::ln2c, c);
        gather_from_sequence_region(*tp_, w.ln2c, w.ln2);  // recomputed, not kept
      }
      {
        const auto g = sp_ ? std::nullopt : input(w.ln2, &LayerCopies::ln2c);
        matmul_backward(blas, dtmp_, p2(G, S.fcw, l), p1(G, S.fcb, l), dbig_, w.ln2, p2(P, S.fcw, l));
      }
    }
    input_grad(dtmp_, dtmpc_);
    fetch(w.res2, &LayerCopies::res2, c);
    norm_backward(ex, dres_, dtmpc_, w.res2, a.ln2_mean, a.ln2_rstd, S.ln2w, S.ln2b, l);
    // dres holds d(res2): through attention.
    output_grad(dres_, dresf_);
    if (tiled_) fetch(w.atty, &LayerCopies::atty, c);  // the tiled backward reads it too
    {
      const auto g = tiled_ ? std::nullopt : input(w.atty, &LayerCopies::atty);
      matmul_backward(blas, datty_, p2(G, S.attprojw, l), p1(G, S.attprojb, l), dresf_, w.atty, p2(P, S.attprojw, l));
    }
    if (!bf16_att_) fetch(w.qkv, &LayerCopies::qkv, c);  // bf16 attention reads the copy itself
    if (tiled_)
      attention_tiled_backward<float>(ex, View3<float>(dqkv_.data(), B_, T_, W),
                                      View3<float>(datty_.data(), B_, T_, Cl), View3<float>(w.qkv.data(), B_, T_, W),
                                      View3<float>(w.atty.data(), B_, T_, Cl), a.lse, NHl, nkv_, doc_pos_);
    else if (bf16_att_ && stash_)  // one sequence at a time, its probabilities and q, k, v from their copies
      for (int b = 0; b < B_; ++b) {
        const std::size_t tb = std::size_t(b) * std::size_t(T_);
        attention_backward_bf16(blas, View3<float>(rows_of(dqkv_, tb, T_).data(), 1, T_, W), datt_, att16(l, b),
                                View3<float>(rows_of(datty_, tb, T_).data(), 1, T_, Cl),
                                View3<float>(rows_of(w.qkv, tb, T_).data(), 1, T_, W), NHl, nkv_);
      }
    else if (bf16_att_)
      attention_backward_bf16(blas, View3<float>(dqkv_.data(), B_, T_, W), datt_, att16(l, 0),
                              View3<float>(datty_.data(), B_, T_, Cl), View3<float>(w.qkv.data(), B_, T_, W), NHl,
                              nkv_);
    else if (stash_)  // one sequence at a time, its probabilities from their bf16 copy
      for (int b = 0; b < B_; ++b) {
        const std::size_t tb = std::size_t(b) * std::size_t(T_);
        load_bf16(ex, View1<float>(w.att.data(), w.att.span()), half_of(c->att, std::size_t(b) * w.att.span(), w.att.span()));
        attention_backward(blas, View3<float>(rows_of(dqkv_, tb, T_).data(), 1, T_, W), datt_,
                           View3<float>(rows_of(datty_, tb, T_).data(), 1, T_, Cl),
                           View3<float>(rows_of(w.qkv, tb, T_).data(), 1, T_, W), w.att, NHl, nkv_);
      }
    else
      attention_backward(blas, View3<float>(dqkv_.data(), B_, T_, W), datt_, View3<float>(datty_.data(), B_, T_, Cl),
                         View3<float>(w.qkv.data(), B_, T_, W), w.att, NHl, nkv_);
    if (pos_.extent(0) > 0) rope_apply(ex, dqkv_, pos_, rope_cos_, rope_sin_, 0, NHl + nkv_, hd, true);  // the transpose
    if (cfg_.qk_norm) {
      fetch(w.qkv_raw, &LayerCopies::qkv_raw, c);
      head_rmsnorm_backward(ex, dqkv_, p1(G, S.qnorm, l), dqkv_, w.qkv_raw, p1(P, S.qnorm, l), a.q_rstd, 0, NHl);
      head_rmsnorm_backward(ex, dqkv_, p1(G, S.knorm, l), dqkv_, w.qkv_raw, p1(P, S.knorm, l), a.k_rstd, NHl * hd, nkv_);
    }
    if (sp_) {
      fetch(w.ln1c, &LayerCopies::ln1c, c);
      gather_from_sequence_region(*tp_, w.ln1c, w.ln1);
    }
    {
      const auto g = sp_ ? std::nullopt : input(w.ln1, &LayerCopies::ln1c);
      matmul_backward(blas, dtmp_, p2(G, S.qkvw, l), p1(G, S.qkvb, l), dqkv_, w.ln1, p2(P, S.qkvw, l));
    }
    input_grad(dtmp_, dtmpc_);
    // the layer's input: the embedding, or layer l - 1's output (bf16_activations: read back)
    const View2<float> x = l == 0 ? encoded_ : layers_[std::size_t(l - 1)].res3;
    if (l > 0) fetch(x, &LayerCopies::res3, c ? &copies_[std::size_t(l - 1)] : nullptr);
    norm_backward(ex, dres_, dtmpc_, x, a.ln1_mean, a.ln1_rstd, S.ln1w, S.ln1b, l);
    // dres holds d(x), the layer input.
    if (layer_done_) layer_done_(l);
  }
  if (stage_.embed) {
    output_grad(dres_, dresf_);
    embedding_backward(ex, p2(G, S.wte), S.wpe >= 0 ? p2(G, S.wpe) : View2<float>(),
                       View3<float>(dresf_.data(), B_, T_, cfg_.d_model), token_rows_);
  }  // else dres_ holds d(stage input), for the previous stage
  if (!partial_.empty()) {
    Kokkos::fence();
    std::size_t saved = 0;
    for (const auto& p : partial_) {
      const View1<float> g(G.data() + p.offset, p.size);
      if (p.block == k) tp_->all_reduce_sum(g.data(), p.size);
      else tp_->all_reduce_sum_block(g.data(), p.size, p.block);
      residual_forward(ex, g, g, View1<float>(partial_saved_.data() + saved, p.size));  // + earlier micro-batches
      saved += p.size;
    }
  }
}

}  // namespace tapestry::model
