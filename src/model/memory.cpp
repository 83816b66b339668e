#include "tapestry/model/memory.hpp"

#include <algorithm>

#include "tapestry/core/error.hpp"
#include "tapestry/kernels/layernorm.hpp"

namespace tapestry::model {

std::size_t activation_bytes(const ModelConfig& m, int B, int T, int tp, bool sequence_parallel, const Stage& stage,
                             bool tiled, bool bf16_activations, bool bf16_attention, bool bf16_linear_inputs) {
  // Mirrors GPT::GPT's allocations (test_train checks the two agree).
  const std::size_t k = std::size_t(tp), N = std::size_t(B) * std::size_t(T), C = std::size_t(m.d_model);
  const bool sp = sequence_parallel && tp > 1, ln = m.norm == "layernorm", rope = m.positions == "rope";
  const std::size_t Nc = sp ? N / k : N, Cl = C / k, NHl = std::size_t(m.n_head) / k;
  const std::size_t nkv = std::max<std::size_t>(1, std::size_t(m.kv_heads()) / k), hd = std::size_t(m.head_dim()), W = (NHl + 2 * nkv) * hd;
  const std::size_t F = std::size_t(m.ffn()) / k, up = (m.mlp == "swiglu" ? 2 : 1) * F;
  const std::size_t Vl = std::size_t(m.vocab_padded()) / k, L = std::size_t(stage.num_layers < 0 ? m.n_layer : stage.num_layers);
  const std::size_t att = tiled ? std::size_t(B) * NHl * std::size_t(T) : std::size_t(B) * NHl * std::size_t(T) * std::size_t(T);
  std::size_t f = 0;  // floats
  if (stage.embed) f += N * C + (sp ? Nc * C : 0);
  else f += Nc * C;
  // The output layer computes the logits R rows at a time and keeps none of them (its backward
  // runs chunk by chunk in the forward).
  const std::size_t R = std::size_t(output_chunk_rows(std::int64_t(N), std::int64_t(C), std::int64_t(Vl)));
  std::size_t halves = 0;  // bf16 copies
  if (stage.head) f += N * C + (sp ? Nc * C : 0) + R * Vl + (ln ? Nc : 0) + Nc + N + (k > 1 ? k * R * 3 : 0);
  if (sp) f += N * C;  // the shared all-gathered norm output
  // Per layer: the tensors kept for backward and the residuals (bf16_activations: bf16 copies per
  // layer, the last layer's output excepted; the layers compute in the backward scratch, one pool,
  // the matrix attention's probabilities of one sequence and one residual buffer), and the
  // statistics (fp32 per layer).
  const std::size_t saved = (sp ? 2 * Nc * C : 2 * N * C) + N * W * (m.qk_norm ? 2 : 1) + N * Cl + N * up + N * F;
  const std::size_t probs = tiled ? 0 : att, res = 2 * Nc * C;
  const std::size_t own = (ln ? 2 * Nc : 0) + 2 * Nc + (m.qk_norm ? N * (NHl + nkv) : 0) + (tiled ? att : 0);
  const bool stash = bf16_activations && L > 0;
  const std::size_t pool = N * std::max({up, W, C});
  // bf16_attention (matrix kernel): the probabilities kept in bf16; scratch for q, k, v (unless
  // the bf16 copies serve), the output's and the scores' gradients in bf16 (the latter inside the
  // forward's one-sequence fp32 scores with bf16_activations).
  const bool att16 = bf16_attention && !tiled;
  // bf16_linear_inputs: the norm outputs (their chunks under SP), the attention output (not
  // tiled) and the MLP's activation output as bf16 copies; their fp32 values in the backward scratch
  const std::size_t lin = bf16_linear_inputs && !stash ? (sp ? 2 * Nc * C : 2 * N * C) + (tiled ? 0 : N * Cl) + N * F : 0;
  f += L * own + (stash ? pool + probs / std::size_t(B) + Nc * C : L * (saved - lin + (att16 ? 0 : probs) + res));
  halves += L * lin;
  if (stash) halves += L * (saved + probs + res) - Nc * C;
  else if (att16) halves += L * probs;
  if (att16) halves += (stash ? 0 : N * W + probs) + N * Cl;
  f += N * C + (sp ? Nc * C : 0);                 // proj (+ chunk)
  f += Nc * C + (sp ? N * C : 0);                 // dres (+ full)
  f += N * C + (sp ? Nc * C : 0);                 // dtmp (+ chunk)
  f += kernels::norm_scratch_rows(Nc) * 2 * C;    // the norms' parameter-gradient partial sums
  f += N * up + (up != F ? N * F : 0) + N * W + N * Cl + (stash ? probs / std::size_t(B) : probs);
  // gradients summed over the TP group in backward(): their earlier micro-batches' share
  if (k > 1)
    for (const auto& t : param_layout(m, tp, stage))
      if (t.size > 0 && (t.tp_partial || (sp && t.token_partial))) f += t.size;
  if (m.kv_heads() % tp != 0)  // a replicated kv head's k and v rows (and biases)
    f += L * 2 * hd * (C + (m.bias ? 1 : 0));
  std::size_t bytes = f * sizeof(float) + halves * 2 + 2 * N * sizeof(int);  // + tokens and targets
  if (rope) bytes += N * sizeof(int) + std::size_t(T) * hd * sizeof(float);  // positions; the cos and sin tables
  return bytes;
}

std::vector<StagePlan> plan_memory(const ModelConfig& m, const PlanLayout& p) {
  validate(m);
  validate_tp(m, p.tp);
  require(p.dp >= 1 && p.batch_size >= 1 && p.seq_len >= 1 && p.micro_batches >= 1 && (p.zero == 0 || p.zero == 1),
          "plan: needs dp, batch-size, seq-len and micro-batches >= 1 and zero 0 or 1");
  require(!p.sequence_parallel || p.tp == 1 || (std::int64_t(p.batch_size) * p.seq_len) % p.tp == 0,
          "plan: sequence parallelism needs batch-size x seq-len divisible by tp");
  const auto per = stage_layers(m.n_layer, p.pp, p.pp_split);
  std::vector<StagePlan> out;
  int first = 0;
  for (int s = 0; s < p.pp; ++s) {
    Stage st;
    st.first_layer = first, st.num_layers = per[std::size_t(s)], st.embed = s == 0, st.head = s == p.pp - 1;
    StagePlan sp;
    sp.first_layer = first, sp.layers = st.num_layers;
    const auto layout = param_layout(m, p.tp, st);
    sp.params = std::int64_t(layout.back().offset + layout.back().size);
    const std::int64_t padded = (sp.params + p.dp - 1) / p.dp * p.dp, shard = padded / p.dp;
    sp.param_bytes = 4 * padded;
    sp.grad_bytes = 4 * padded + (p.zero ? 4 * shard : 0);
    sp.optimizer_bytes = 8 * (p.zero ? shard : padded);
    sp.bf16_weight_bytes = p.bf16 ? 2 * padded : 0;
    sp.activation_bytes = std::int64_t(activation_bytes(m, p.batch_size, p.seq_len, p.tp, p.sequence_parallel, st,
                                                        p.tiled_attention, p.bf16_activations, p.bf16, p.bf16));
    const std::int64_t chunk = std::int64_t(p.batch_size) * p.seq_len / (p.sequence_parallel ? p.tp : 1) * m.d_model;
    if (p.pp > 1) {
      const std::int64_t msgs = (s > 0 ? 2 : 0) * p.micro_batches + (s < p.pp - 1 ? p.micro_batches + 1 : 0);
      sp.pipeline_bytes = 4 * chunk * msgs;
    }
    out.push_back(sp);
    first += st.num_layers;
  }
  return out;
}

}  // namespace tapestry::model
