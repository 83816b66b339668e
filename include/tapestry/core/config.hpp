#pragma once
/// \file
/// \brief Plain configuration structs, checked in one place by validate().

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace tapestry {

/// \brief The model spec: the shape of a decoder and what its blocks are made of. GPT-2 and the
/// Llama family (Llama 3, Apertus, ...) are settings of the same keys (docs/model-spec.md); the
/// parameter layout (names, shapes, tensor-parallel splits) is derived from it by the model layer.
struct ModelConfig {
  int n_layer = 4;
  int n_head = 4;
  int d_model = 128;
  int max_seq_len = 256;    ///< longest sequence (rows of a learned position embedding)
  int vocab_size = 256;     ///< real tokens
  int padded_vocab_size = 0;  ///< rows of the token embedding; 0: vocab_size rounded up to 128

  /// Family whose defaults fill the keys a run does not set: gpt2 or llama (cli::apply_arch).
  std::string arch = "gpt2";
  int n_kv_head = 0;               ///< key/value heads (GQA/MQA); 0: n_head (multi-head)
  int ffn_dim = 0;                 ///< MLP hidden size; 0: 4 * d_model
  std::string norm = "layernorm";  ///< layernorm or rmsnorm
  double norm_eps = 1e-5;
  bool qk_norm = false;            ///< RMSNorm over each head's q and k (weights per head dimension)
  std::string mlp = "gelu";        ///< gelu (up, GELU, down), swiglu (silu(gate) * up, down) or xielu
  std::string positions = "learned";  ///< learned (position embedding) or rope
  double rope_theta = 10000.0;
  std::string rope_scaling = "none";  ///< none or llama3
  double rope_factor = 8.0, rope_low_freq_factor = 1.0, rope_high_freq_factor = 4.0;
  int rope_original_context = 8192;
  bool tie_embeddings = true;      ///< the output layer is the token embedding
  bool bias = true;                ///< biases in the linear layers (and LayerNorm's bias)

  // Document masking of packed sequences (not block keys: a checkpoint can be trained on with or
  // without it). A document ends at token eod_token (the separator `data prepare` appends).
  bool doc_mask = false;         ///< attention stays inside each document; RoPE positions restart
  std::int64_t eod_token = -1;   ///< end-of-document id; -1: none
  bool eod_mask_loss = false;    ///< the token after an end-of-document is not predicted (no loss)

  int head_dim() const { return d_model / n_head; }
  int kv_heads() const { return n_kv_head > 0 ? n_kv_head : n_head; }
  int ffn() const { return ffn_dim > 0 ? ffn_dim : 4 * d_model; }
  bool learned_positions() const { return positions == "learned"; }
  bool norm_has_bias() const { return norm == "layernorm" && bias; }
  /// Exactly GPT-2's block (llm.c's 16 tensors): what llm.c files and `--init-from` can hold.
  bool is_gpt2() const;
  /// Padded vocabulary actually allocated.
  int vocab_padded() const;
  /// Number of parameters (padded embedding rows included; the tied output layer counted once).
  std::int64_t num_parameters() const;
  /// Training FLOPs per token for forward + backward at sequence length `T`: 6 * (parameters used
  /// in matrix products: all but the position embedding, and the token embedding when it is not
  /// also the output layer) + 12 * n_layer * n_head * head_dim * T (attention's two products).
  double flops_per_token(int T) const;
};

/// Calls f(name, field, help) for every block key of the spec (beyond the shape), in a fixed order:
/// the one list that the command line (name with '-' for '_'), the checkpoint's /model attributes
/// and exports share. M is ModelConfig or const ModelConfig.
template <class M, class F> void for_each_block_key(M& m, F&& f) {
  f("arch", m.arch,
    "Family whose defaults fill the block keys you do not set: gpt2 (LayerNorm, GELU, learned positions, tied, "
    "biases) or llama (RMSNorm, SwiGLU, RoPE theta 500000, untied, no biases)");
  f("n_kv_head", m.n_kv_head, "Key/value heads (grouped-query attention; must divide n-head); 0: n-head");
  f("ffn_dim", m.ffn_dim, "MLP hidden size; 0: 4 x d-model");
  f("norm", m.norm, "layernorm or rmsnorm");
  f("norm_eps", m.norm_eps, "Epsilon of the norms (and of QK-norm)");
  f("qk_norm", m.qk_norm, "RMSNorm over each head's q and k before RoPE (true/false)");
  f("mlp", m.mlp,
    "gelu (up, GELU, down), swiglu (silu(gate) * up, down) or xielu (Apertus: trainable activation with two "
    "scalars per layer)");
  f("positions", m.positions, "learned (position embedding) or rope");
  f("rope_theta", m.rope_theta, "RoPE base");
  f("rope_scaling", m.rope_scaling, "none or llama3 (Llama 3.1's frequency scaling)");
  f("rope_factor", m.rope_factor, "llama3 scaling: factor");
  f("rope_low_freq_factor", m.rope_low_freq_factor, "llama3 scaling: low_freq_factor");
  f("rope_high_freq_factor", m.rope_high_freq_factor, "llama3 scaling: high_freq_factor");
  f("rope_original_context", m.rope_original_context, "llama3 scaling: original_max_position_embeddings");
  f("tie_embeddings", m.tie_embeddings, "The output layer is the token embedding (true/false)");
  f("bias", m.bias, "Biases in the linear layers and LayerNorms (true/false)");
}

/// One line naming the shape and, beyond GPT-2, the block options ("L=4 H=4 C=128 ... rmsnorm ...").
std::string spec_string(const ModelConfig& m);

/// The values of `family`'s keys (gpt2 or llama), as "key" -> TOML value; cli::apply_arch applies
/// them to the keys a run leaves unset. Throws tapestry::Error for an unknown family.
std::vector<std::pair<std::string, std::string>> arch_defaults(const std::string& family);

/// \brief Optimizer and schedule.
struct OptimConfig {
  double lr = 1e-3;           ///< peak learning rate
  double min_lr_ratio = 0.1;  ///< cosine decays to lr * min_lr_ratio
  int warmup_steps = 20;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;  ///< applied to 2-D weights (matrices, embeddings) only
  double grad_clip = 1.0;     ///< global-norm clip; <= 0 disables
};

/// \brief How the ranks are laid out and how gradients travel.
struct ParallelConfig {
  int tp = 1;                 ///< tensor-parallel ranks
  bool sequence_parallel = false;  ///< with tp: LayerNorm and residual regions split along the tokens
  int pp = 1;                 ///< pipeline stages
  std::string pp_split;       ///< layers per stage, e.g. "3,3,2"; "": as even as possible
  int dp = 0;                 ///< data-parallel ranks; 0: world / (tp * pp)
  int zero = 0;               ///< 1: shard AdamW state over DP (ZeRO-1)
  double bucket_mb = 25.0;    ///< gradient all-reduce bucket, MiB
  bool overlap_grad_reduce = false;  ///< start each bucket's sum while backward still runs
  std::string collectives = "auto";  ///< mpi, nccl or auto
  std::string grad_reduce = "flat";  ///< flat or hierarchical (node, site, cross-site)
  int sites = 1;              ///< sites in this job: contiguous blocks of DP ranks (or TAPESTRY_SITE)
  std::string compress = "none";  ///< cross-site encoding (hierarchical or DiLoCo): none, bf16, int8, int4, topk
  // DiLoCo: sites train apart for outer_steps inner steps, then average their parameter change.
  int outer_steps = 0;            ///< H; 0: off (every step reduces over all DP ranks)
  double outer_lr = 0.7;          ///< outer SGD learning rate (DiLoCo's default)
  double outer_momentum = 0.9;    ///< outer SGD momentum (DiLoCo's default)
  bool outer_nesterov = true;     ///< Nesterov momentum in the outer step
  // Streaming DiLoCo (Douillard et al. 2025): fragment p of P is synchronised every H steps at
  // offset p * H / P; its exchange overlaps outer_delay inner steps before it is merged.
  int outer_fragments = 1;        ///< P; 1: the whole model at once
  int outer_delay = 0;            ///< tau: steps between sending a fragment and merging it; 0: blocking
  double outer_mix = 0.5;         ///< alpha (tau > 0): merged = alpha * local + (1 - alpha) * outer
  bool outer_overlap = true;      ///< tau > 0: exchange on a thread (false: at send time, then held)
  /// Stragglers: a site slower than the fastest computes only the inner steps that keep its pace
  /// (skipping the others), and merges weight each site by the steps it computed.
  bool outer_quota = false;
  int emulate_slow_site = -1;      ///< benchmarks: this site's ranks sleep after each computed step...
  double emulate_slow_factor = 1;  ///< ...so that it takes this many times its compute time
  // Federation: this job is one site of a run made of `sites` separately launched jobs.
  std::string federation;         ///< the run's name at the rendezvous; "": not federated
  int site_id = 0;                ///< this job's site (0 hosts the rendezvous)
  double federation_timeout = 120;  ///< seconds for all sites to join (elastic: also for a peer to answer)
  /// Elastic federation: "host:port,..." of every site's first rank, in site order. The sites talk
  /// over TCP (no MPI between jobs, no rendezvous server): a site whose job dies is dropped and
  /// the others go on; restarted, it rejoins at the next outer boundary. "": MPI federation.
  std::string federation_peers;
};

/// Arithmetic of the fp32 matrix multiplies: fp32 throughout, or bf16 inputs (rounded to nearest
/// even) with fp32 accumulation and an fp32 result, as on tensor cores. fp64 is never rounded.
enum class Precision { fp32, bf16 };

/// "fp32" or "bf16"; throws tapestry::Error naming the value otherwise.
Precision parse_precision(const std::string& name);

/// \brief One training run.
struct TrainConfig {
  ModelConfig model;
  OptimConfig optim;
  ParallelConfig parallel;
  int batch_size = 8;   ///< B: sequences per micro-batch on each rank
  int seq_len = 128;    ///< T: tokens per sequence
  int grad_accum = 1;   ///< micro-batches per optimizer step (derived when global_batch is set)
  int global_batch = 0; ///< sequences per optimizer step over all DP ranks; 0: B * dp * grad_accum
  int steps = 200;
  int val_every = 50;   ///< 0 disables validation
  int val_batches = 8;  ///< global batches per validation (the same rows for every layout)
  int log_every = 1;
  std::uint64_t seed = 1234;
  std::string train_data;   ///< a dataset path, or a mixture "0.7 A 0.3 B" (io::parse_data_spec)
  std::string val_data;
  bool shuffle = false;     ///< seeded random order of samples per epoch (seed)
  std::string init_from;     ///< llm.c GPT-2 checkpoint (optional)
  std::string export_llmc;   ///< write the final parameters as an llm.c checkpoint (optional)
  std::string metrics_file;  ///< JSONL, one record per step (optional)
  std::string ckpt_dir = "checkpoints";  ///< where HDF5 checkpoints go
  int save_every = 0;        ///< save every N steps (and at the end); 0: only on a stop signal
  int keep = 3;              ///< keep the newest K checkpoints; 0: keep all
  /// Write checkpoints on a background thread: training stalls only while the state is copied
  /// into host buffers (needs MPI_THREAD_MULTIPLE; otherwise saves are synchronous)
  bool async_save = true;
  std::string resume;        ///< "", "auto" (ckpt_dir/latest if any) or a checkpoint path
  double peak_flops = 437e9;  ///< for MFU: FP32 FMA peak of one GPU per rank, or of a node's CPU cores (shared by its ranks)
  std::string attention = "auto";  ///< matrix (T x T in memory, BLAS), tiled, or auto (= matrix)
  /// fp32, or bf16: matrix multiplies take bf16 inputs and accumulate in fp32; master weights,
  /// gradients, AdamW state, reductions and the other kernels stay fp32.
  std::string precision = "fp32";
  /// fp32, or bf16: the activations kept for backward are stored in bf16 (model::GptOptions::
  /// bf16_activations); the computation stays fp32.
  std::string activations = "fp32";
};

/// \brief Throws tapestry::Error with one line naming the first problem found.
void validate(const ModelConfig& m);
void validate(const OptimConfig& o);
void validate(const TrainConfig& c);
void validate(const ParallelConfig& p);

/// --activations: "fp32" -> false, "bf16" -> true (saved activations in bf16); throws
/// tapestry::Error naming the value otherwise.
bool parse_bf16_activations(const std::string& name);

/// An elastic federation (--federation with --federation-peers): the sites are separate jobs that
/// meet over TCP, with no MPI between them.
inline bool elastic_federation(const ParallelConfig& p) { return !p.federation.empty() && !p.federation_peers.empty(); }

/// What every site of a federated run must agree on (model, batch, schedule, layout, cross-site
/// algorithm), as one line; file paths are left out (each site has its own file system).
std::string federation_fingerprint(const TrainConfig& c);

/// Layers of each of `pp` stages: `split` ("3,3,2") or as even as possible (earlier stages take
/// the remainder). Throws tapestry::Error for more stages than layers or a split that does not
/// sum to n_layer.
std::vector<int> stage_layers(int n_layer, int pp, const std::string& split);

/// "5GB", "500MB", "64KB" (1000-based, as Hugging Face) or a plain byte count; throws
/// tapestry::Error naming the text otherwise.
std::uint64_t parse_bytes(const std::string& text);

/// Fixes grad_accum and global_batch for `dp` data-parallel ranks: global_batch (when set) must be
/// a multiple of batch_size * dp. Throws tapestry::Error otherwise.
void resolve_batch(TrainConfig& c, int dp);

}  // namespace tapestry

namespace tapestry {

/// \brief `tapestry bench step`: time forward + backward + update of one shape on random tokens.
struct BenchStepConfig {
  ModelConfig model;
  int tp = 1;                      ///< tensor-parallel ranks (the rest of the job is data parallel)
  bool sequence_parallel = false;
  std::string attention = "auto";  ///< as TrainConfig::attention
  std::string precision = "fp32";  ///< as TrainConfig::precision
  std::string activations = "fp32";  ///< as TrainConfig::activations
  bool kernel_times = false;       ///< time every Kokkos kernel (fenced) and list them
  bool overlap_grad_reduce = false;  ///< as ParallelConfig::overlap_grad_reduce
  double bucket_mb = 25.0;         ///< gradient all-reduce bucket, MiB
  int batch_size = 4;
  int seq_len = 64;
  int warmup = 2;
  int iters = 5;
  double peak_flops = 437e9;
  std::uint64_t seed = 1;
  std::string json;  ///< optional JSON result file
};

/// \brief `tapestry bench gemm`: the BLAS's sgemm rate at M = N = K = size.
struct BenchGemmConfig {
  int size = 2048;
  int iters = 10;
  std::string precision = "fp32";  ///< fp32, or bf16 inputs with fp32 accumulation
};

/// \brief `tapestry bench allreduce`: nccl-tests style sweep of message sizes.
struct BenchAllreduceConfig {
  std::int64_t min_bytes = 8;
  std::int64_t max_bytes = std::int64_t(256) << 20;
  double factor = 2.0;  ///< size multiplier between rows
  int warmup = 5;
  int iters = 20;
  double bucket_mb = 25.0;  ///< Tapestry reducer's bucket size
  std::string collectives = "auto";
  std::string algo = "flat";       ///< flat or hierarchical
  int sites = 1;                   ///< with hierarchical: sites (contiguous blocks or TAPESTRY_SITE)
  std::string compress = "none";   ///< with hierarchical: none, bf16, int8, int4, topk
  std::string output;  ///< .json or .csv results file (optional)
};

/// \brief `tapestry bench ckpt`: checkpoint write and read rates with AdamW state.
struct BenchCkptConfig {
  ModelConfig model;
  std::string dir = "bench_ckpt";
  int iters = 3;
};

/// \brief `tapestry plan`: bytes per rank of a model on a layout, computed, nothing allocated.
struct PlanConfig {
  ModelConfig model;
  int tp = 1, pp = 1, dp = 1, zero = 0;
  bool sequence_parallel = false;
  std::string attention = "auto";  ///< as TrainConfig::attention (tiled: no T x T matrices)
  std::string pp_split;
  int batch_size = 1;       ///< sequences per micro-batch per rank
  int seq_len = 4096;
  int micro_batches = 1;    ///< per optimizer step
  int gpus_per_node = 4;    ///< for the per-node line
  std::string precision = "fp32";  ///< as TrainConfig::precision (bf16: a bf16 copy of the weights)
  std::string activations = "fp32";  ///< as TrainConfig::activations
  std::string json;         ///< optional JSON result file
};

void validate(const BenchStepConfig& c);
void validate(const BenchAllreduceConfig& c);

}  // namespace tapestry
