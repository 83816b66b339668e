#include "tapestry/core/config.hpp"

#include <algorithm>
#include <cctype>
#include <cstdlib>

#include "tapestry/core/error.hpp"

namespace tapestry {

namespace {
std::string num(double v) {
  std::string s = std::to_string(v);
  while (s.size() > 1 && s.back() == '0') s.pop_back();
  if (!s.empty() && s.back() == '.') s.pop_back();
  return s;
}
}  // namespace

int ModelConfig::vocab_padded() const {
  if (padded_vocab_size > 0) return padded_vocab_size;
  return (vocab_size + 127) / 128 * 128;
}

bool ModelConfig::is_gpt2() const {
  return kv_heads() == n_head && ffn() == 4 * d_model && norm == "layernorm" && !qk_norm && mlp == "gelu" &&
         positions == "learned" && tie_embeddings && bias;
}

std::int64_t ModelConfig::num_parameters() const {
  const std::int64_t C = d_model, L = n_layer, hd = head_dim(), F = ffn(), q = std::int64_t(n_head) * hd,
                     kv = std::int64_t(kv_heads()) * hd, b = bias ? 1 : 0;
  const std::int64_t norm_p = norm_has_bias() ? 2 * C : C;
  const std::int64_t up_rows = mlp == "swiglu" ? 2 * F : F;
  const std::int64_t per_layer = 2 * norm_p + (q + 2 * kv) * (C + b) + (qk_norm ? 2 * hd : 0) + C * q + b * C +
                                 up_rows * (C + b) + C * F + b * C + (mlp == "xielu" ? 2 : 0);
  const std::int64_t V = vocab_padded();
  return V * C * (tie_embeddings ? 1 : 2) + (learned_positions() ? std::int64_t(max_seq_len) * C : 0) +
         L * per_layer + norm_p;
}

double ModelConfig::flops_per_token(int T) const {
  double n = double(num_parameters());
  if (learned_positions()) n -= double(max_seq_len) * d_model;
  if (!tie_embeddings) n -= double(vocab_padded()) * d_model;  // the input embedding is a lookup
  return 6.0 * n + 12.0 * n_layer * double(n_head) * head_dim() * T;
}

std::string spec_string(const ModelConfig& m) {
  std::string s = "L=" + num(m.n_layer) + " H=" + num(m.n_head) + " C=" + num(m.d_model) + " V=" + num(m.vocab_size) +
                  "/" + num(m.vocab_padded()) + " maxT=" + num(m.max_seq_len);
  if (m.is_gpt2()) return s;  // GPT-2: the shape says it all (as before the model spec)
  s += " kv=" + num(m.kv_heads()) + " ffn=" + num(m.ffn()) + " " + m.norm + "(" + num(m.norm_eps) + ")" +
       (m.qk_norm ? "+qk-norm" : "") + " " + m.mlp + " " + m.positions;
  if (m.positions == "rope") {
    s += "(theta=" + num(m.rope_theta);
    if (m.rope_scaling == "llama3")
      s += ", llama3 x" + num(m.rope_factor) + " " + num(m.rope_low_freq_factor) + "/" + num(m.rope_high_freq_factor) +
           " @" + num(m.rope_original_context);
    s += ")";
  }
  return s + (m.tie_embeddings ? " tied" : " untied") + (m.bias ? " bias" : " no-bias");
}

std::vector<std::pair<std::string, std::string>> arch_defaults(const std::string& family) {
  if (family == "gpt2")
    return {{"norm", "layernorm"}, {"norm-eps", "1e-5"}, {"qk-norm", "false"}, {"mlp", "gelu"},
            {"positions", "learned"}, {"tie-embeddings", "true"}, {"bias", "true"}};
  if (family == "llama")  // Llama 3's block: RMSNorm, SwiGLU, RoPE (theta 500000), untied, no biases
    return {{"norm", "rmsnorm"}, {"norm-eps", "1e-5"}, {"qk-norm", "false"}, {"mlp", "swiglu"},
            {"positions", "rope"}, {"rope-theta", "500000"}, {"tie-embeddings", "false"}, {"bias", "false"}};
  throw Error("arch must be gpt2 or llama (got '" + family + "')");
}

void validate(const ModelConfig& m) {
  require(m.n_layer >= 1, "n_layer must be >= 1 (got " + num(m.n_layer) + ")");
  require(m.n_head >= 1, "n_head must be >= 1 (got " + num(m.n_head) + ")");
  require(m.d_model >= 1, "d_model must be >= 1 (got " + num(m.d_model) + ")");
  require(m.d_model % m.n_head == 0, "n_head (" + num(m.n_head) + ") does not divide d_model (" +
                                         num(m.d_model) + ")");
  require(m.max_seq_len >= 1, "max_seq_len must be >= 1 (got " + num(m.max_seq_len) + ")");
  require(m.vocab_size >= 2 && m.vocab_size <= (1 << 30),
          "vocab_size must be in [2, 2^30] (got " + num(m.vocab_size) + ")");
  require(m.padded_vocab_size == 0 || m.padded_vocab_size >= m.vocab_size,
          "padded_vocab_size (" + num(m.padded_vocab_size) + ") is smaller than vocab_size (" +
              num(m.vocab_size) + ")");
  arch_defaults(m.arch);
  require(m.n_kv_head >= 0 && m.n_head % m.kv_heads() == 0,
          "n_kv_head (" + num(m.n_kv_head) + ") must divide n_head (" + num(m.n_head) + ")");
  require(m.ffn_dim >= 0, "ffn_dim must be >= 0 (0: 4 x d_model; got " + num(m.ffn_dim) + ")");
  require(m.norm == "layernorm" || m.norm == "rmsnorm", "norm must be layernorm or rmsnorm (got '" + m.norm + "')");
  require(m.norm_eps > 0, "norm_eps must be > 0 (got " + num(m.norm_eps) + ")");
  require(m.mlp == "gelu" || m.mlp == "swiglu" || m.mlp == "xielu",
          "mlp must be gelu, swiglu or xielu (got '" + m.mlp + "')");
  require(m.positions == "learned" || m.positions == "rope",
          "positions must be learned or rope (got '" + m.positions + "')");
  require(m.positions != "rope" || m.head_dim() % 2 == 0,
          "rope needs an even head dimension (d_model / n_head = " + num(m.head_dim()) + ")");
  require(m.rope_theta > 0, "rope_theta must be > 0 (got " + num(m.rope_theta) + ")");
  require(m.rope_scaling == "none" || m.rope_scaling == "llama3",
          "rope_scaling must be none or llama3 (got '" + m.rope_scaling + "')");
  require(m.rope_scaling == "none" || (m.rope_factor >= 1 && m.rope_low_freq_factor > 0 &&
                                       m.rope_high_freq_factor > m.rope_low_freq_factor && m.rope_original_context >= 1),
          "rope_scaling llama3 needs rope_factor >= 1, 0 < rope_low_freq_factor < rope_high_freq_factor and "
          "rope_original_context >= 1");
  require(!(m.doc_mask || m.eod_mask_loss) || (m.eod_token >= 0 && m.eod_token < m.vocab_size),
          "--doc-mask and --eod-mask-loss need --eod-token, the end-of-document id, in [0, vocab_size) (got " +
              std::to_string(m.eod_token) + ")");
}

void validate(const OptimConfig& o) {
  require(o.lr > 0, "lr must be > 0 (got " + num(o.lr) + ")");
  require(o.min_lr_ratio >= 0 && o.min_lr_ratio <= 1,
          "min_lr_ratio must be in [0, 1] (got " + num(o.min_lr_ratio) + ")");
  require(o.warmup_steps >= 0, "warmup_steps must be >= 0");
  require(o.beta1 >= 0 && o.beta1 < 1, "beta1 must be in [0, 1) (got " + num(o.beta1) + ")");
  require(o.beta2 >= 0 && o.beta2 < 1, "beta2 must be in [0, 1) (got " + num(o.beta2) + ")");
  require(o.eps > 0, "eps must be > 0");
  require(o.weight_decay >= 0, "weight_decay must be >= 0");
}

void validate(const ParallelConfig& p) {
  require(p.tp >= 1 && p.pp >= 1 && p.dp >= 0, "tp and pp must be >= 1 and dp >= 0 (0: inferred)");
  require(p.zero == 0 || p.zero == 1, "zero must be 0 or 1 (got " + num(p.zero) + ")");
  require(p.bucket_mb > 0, "bucket-mb must be > 0 (got " + num(p.bucket_mb) + ")");
  require(p.grad_reduce == "flat" || p.grad_reduce == "hierarchical",
          "grad-reduce must be flat or hierarchical (got '" + p.grad_reduce + "')");
  require(p.sites >= 1, "sites must be >= 1 (got " + num(p.sites) + ")");
  require(!p.overlap_grad_reduce || (p.grad_reduce == "flat" && p.outer_steps == 0),
          "--overlap-grad-reduce needs --grad-reduce flat and no --outer-steps (it overlaps the flat all-reduce "
          "with backward)");
  require(p.compress == "none" || p.compress == "bf16" || p.compress == "int8" || p.compress == "int4" ||
              p.compress == "topk",
          "compress must be none, bf16, int8, int4 or topk (got '" + p.compress + "')");
  require(p.compress == "none" || p.grad_reduce == "hierarchical" || p.outer_steps > 0,
          "--compress needs --grad-reduce hierarchical or --outer-steps (it applies to the cross-site step)");
  require(p.federation.empty() || (p.sites >= 2 && p.site_id >= 0 && p.site_id < p.sites),
          "--federation needs --sites N >= 2 (the jobs of the run) and --site-id in [0, N) (got sites " +
              num(p.sites) + ", site-id " + num(p.site_id) + ")");
  require(p.federation_timeout > 0, "federation-timeout must be > 0");
  require(p.federation_peers.empty() ||
              (!p.federation.empty() && p.outer_steps > 0 && p.tp == 1 && p.pp == 1),
          "--federation-peers (elastic federation) needs --federation NAME and --outer-steps (DiLoCo), with --tp 1 "
          "and --pp 1");
  require(p.outer_steps >= 0, "outer-steps must be >= 0 (got " + num(p.outer_steps) + ")");
  require(p.outer_lr > 0, "outer-lr must be > 0 (got " + num(p.outer_lr) + ")");
  require(p.outer_momentum >= 0 && p.outer_momentum < 1,
          "outer-momentum must be in [0, 1) (got " + num(p.outer_momentum) + ")");
  if (p.outer_steps > 0) {
    require(p.outer_fragments >= 1 && p.outer_fragments <= p.outer_steps,
            "outer-fragments must be in [1, outer-steps] (got " + num(p.outer_fragments) + " with outer-steps " +
                num(p.outer_steps) + ")");
    const int gap = p.outer_steps / p.outer_fragments;
    require(p.outer_delay >= 0 && p.outer_delay <= gap,
            "outer-delay must be in [0, outer-steps / outer-fragments = " + num(gap) + "] (got " + num(p.outer_delay) +
                "): one fragment's exchange at a time");
    require(p.outer_mix >= 0 && p.outer_mix < 1, "outer-mix must be in [0, 1) (got " + num(p.outer_mix) + ")");
  }
  require(!p.outer_quota || p.outer_steps > 0, "--outer-quota needs --outer-steps (it paces DiLoCo's inner steps)");
  require(p.emulate_slow_site >= -1 && p.emulate_slow_site < std::max(1, p.sites) && p.emulate_slow_factor >= 1 &&
              p.emulate_slow_factor <= 100,
          "--emulate-slow-site must be a site in [0, sites) and --emulate-slow-factor in [1, 100] (got " +
              num(p.emulate_slow_site) + ", " + num(p.emulate_slow_factor) + ")");
}

bool parse_bf16_activations(const std::string& name) {
  require(name == "fp32" || name == "bf16", "activations must be fp32 or bf16 (got '" + name + "')");
  return name == "bf16";
}

Precision parse_precision(const std::string& name) {
  if (name == "fp32") return Precision::fp32;
  if (name == "bf16") return Precision::bf16;
  throw Error("precision must be fp32 or bf16 (got '" + name + "')");
}

std::string federation_fingerprint(const TrainConfig& c) {
  const auto& m = c.model;
  const auto& o = c.optim;
  const auto& p = c.parallel;
  return "model " + spec_string(m) + "; B=" + num(c.batch_size) +
         " T=" + num(c.seq_len) + " precision=" + c.precision + " global_batch=" + num(c.global_batch) + " grad_accum=" + num(c.grad_accum) +
         " steps=" + num(c.steps) + " seed=" + std::to_string(c.seed) + "; lr=" + num(o.lr) + " warmup=" +
         num(o.warmup_steps) + " min_lr_ratio=" + num(o.min_lr_ratio) + " wd=" + num(o.weight_decay) +
         " clip=" + num(o.grad_clip) + "; tp=" + num(p.tp) + " pp=" + num(p.pp) + " zero=" + num(p.zero) +
         " grad_reduce=" + p.grad_reduce + " compress=" + p.compress + " sites=" + num(p.sites) +
         " outer_steps=" + num(p.outer_steps) + " outer_lr=" + num(p.outer_lr) + " outer_momentum=" +
         num(p.outer_momentum) + " outer_fragments=" + num(p.outer_fragments) + " outer_delay=" + num(p.outer_delay) +
         " outer_mix=" + num(p.outer_mix) + " outer_quota=" + num(int(p.outer_quota));
}

std::vector<int> stage_layers(int n_layer, int pp, const std::string& split) {
  require(pp >= 1 && pp <= n_layer, "pipeline of " + num(pp) + " stages for " + num(n_layer) +
                                        " layers: every stage needs at least one layer (more stages than layers)");
  std::vector<int> out;
  if (split.empty()) {
    for (int s = 0; s < pp; ++s) out.push_back(n_layer / pp + (s < n_layer % pp ? 1 : 0));
    return out;
  }
  int sum = 0;
  std::size_t pos = 0;
  while (pos <= split.size()) {
    const std::size_t comma = std::min(split.find(',', pos), split.size());
    const std::string item = split.substr(pos, comma - pos);
    char* end = nullptr;
    const long v = std::strtol(item.c_str(), &end, 10);
    require(!item.empty() && *end == '\0' && v >= 1, "--pp-split '" + split + "': '" + item + "' is not a layer count >= 1");
    out.push_back(int(v));
    sum += int(v);
    pos = comma + 1;
  }
  require(int(out.size()) == pp && sum == n_layer, "--pp-split '" + split + "' gives " + num(double(out.size())) +
                                                       " stages and " + num(sum) + " layers; the run has " + num(pp) +
                                                       " stages and n_layer = " + num(n_layer));
  return out;
}

std::uint64_t parse_bytes(const std::string& text) {
  std::size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(text, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  std::string unit = text.substr(pos);
  for (auto& ch : unit) ch = char(std::toupper(static_cast<unsigned char>(ch)));
  const double scale = unit.empty() || unit == "B" ? 1 : unit == "KB" ? 1e3 : unit == "MB" ? 1e6 : unit == "GB" ? 1e9
                                                                              : unit == "TB" ? 1e12 : -1;
  require(pos > 0 && scale > 0 && v > 0, "'" + text + "' is not a size (e.g. 5GB, 500MB or a byte count)");
  return std::uint64_t(v * scale);
}

void resolve_batch(TrainConfig& c, int dp) {
  // Checked here, before the division below (a batch size of 0 was a SIGFPE under mpirun).
  require(c.batch_size >= 1, "batch_size must be >= 1 (got " + num(c.batch_size) + ")");
  require(dp >= 1, "the data-parallel size must be >= 1 (got " + num(dp) + ")");
  require(c.global_batch >= 0, "global_batch must be >= 0 (got " + num(c.global_batch) + ")");
  require(c.grad_accum >= 1, "grad-accum (micro-batches) must be >= 1 (got " + num(c.grad_accum) + ")");
  require(std::int64_t(c.batch_size) * dp * c.grad_accum <= 0x7fffffff && std::int64_t(c.batch_size) * dp <= 0x7fffffff,
          "batch_size x dp x grad-accum is above 2^31 - 1");
  const int per_micro = c.batch_size * dp;
  if (c.global_batch > 0) {
    require(c.global_batch % per_micro == 0,
            "global_batch (" + num(c.global_batch) + ") is not a multiple of batch_size x dp = " +
                num(c.batch_size) + " x " + num(dp) + " = " + num(per_micro));
    c.grad_accum = c.global_batch / per_micro;
  } else {
    c.global_batch = per_micro * c.grad_accum;
  }
}

void validate(const TrainConfig& c) {
  validate(c.model);
  validate(c.optim);
  validate(c.parallel);
  require(c.global_batch >= 0, "global_batch must be >= 0");
  require(c.batch_size >= 1, "batch_size must be >= 1 (got " + num(c.batch_size) + ")");
  require(c.seq_len >= 1, "seq_len must be >= 1 (got " + num(c.seq_len) + ")");
  require(c.seq_len <= c.model.max_seq_len, "seq_len (" + num(c.seq_len) +
                                                ") is above the model's max_seq_len (" +
                                                num(c.model.max_seq_len) + ")");
  require(c.grad_accum >= 1, "grad-accum (micro-batches) must be >= 1 (got " + num(c.grad_accum) + ")");
  require(c.steps >= 0, "steps must be >= 0");
  require(c.val_every >= 0, "val_every must be >= 0");
  require(c.val_every == 0 || c.val_batches >= 1, "val_batches must be >= 1 when val_every > 0");
  require(c.val_every == 0 || !c.val_data.empty(), "val_every > 0 needs val_data");
  require(c.log_every >= 1, "log_every must be >= 1");
  require(c.save_every >= 0, "save_every must be >= 0");
  require(c.keep >= 0, "keep must be >= 0");
  require(!c.train_data.empty(), "train_data is not set");
  require(c.peak_flops > 0, "peak_flops must be > 0");
  require(c.attention == "auto" || c.attention == "matrix" || c.attention == "tiled",
          "attention must be auto, matrix or tiled (got '" + c.attention + "')");
  parse_precision(c.precision);
  parse_bf16_activations(c.activations);
}

}  // namespace tapestry

namespace tapestry {

void validate(const BenchStepConfig& c) {
  validate(c.model);
  require(c.batch_size >= 1, "batch_size must be >= 1");
  require(c.seq_len >= 1 && c.seq_len <= c.model.max_seq_len,
          "seq_len (" + std::to_string(c.seq_len) + ") must be in [1, max_seq_len = " +
              std::to_string(c.model.max_seq_len) + "]");
  require(c.warmup >= 0 && c.iters >= 1, "bench needs warmup >= 0 and iters >= 1");
  require(c.peak_flops > 0, "peak_flops must be > 0");
  require(c.attention == "auto" || c.attention == "matrix" || c.attention == "tiled",
          "attention must be auto, matrix or tiled (got '" + c.attention + "')");
  parse_precision(c.precision);
  parse_bf16_activations(c.activations);
}

void validate(const BenchAllreduceConfig& c) {
  require(c.min_bytes >= 4 && c.max_bytes >= c.min_bytes,
          "bench allreduce needs 4 <= min-bytes <= max-bytes (got " + std::to_string(c.min_bytes) + ", " +
              std::to_string(c.max_bytes) + ")");
  require(c.factor > 1.0, "bench allreduce: factor must be > 1");
  require(c.warmup >= 0 && c.iters >= 1, "bench allreduce needs warmup >= 0 and iters >= 1");
  require(c.bucket_mb > 0, "bucket-mb must be > 0 (got " + num(c.bucket_mb) + ")");
  ParallelConfig p;
  p.grad_reduce = c.algo, p.sites = c.sites, p.compress = c.compress, p.bucket_mb = c.bucket_mb;
  validate(p);
  const auto dot = c.output.rfind('.');
  require(c.output.empty() || (dot != std::string::npos && (c.output.substr(dot) == ".json" || c.output.substr(dot) == ".csv")),
          "bench allreduce: --output must end in .json or .csv (got '" + c.output + "')");
}

}  // namespace tapestry
