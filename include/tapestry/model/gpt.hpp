#pragma once
/// \file
/// \brief A pre-norm decoder described by the model spec (core/config.hpp): GPT-2 (LayerNorm,
/// learned positions, GELU, tied embedding, biases) or the Llama family (RMSNorm, RoPE, GQA,
/// SwiGLU or xIELU, QK-norm, untied output layer) and any mix of their options. fp32 parameters in
/// one flat buffer of per-layer-stacked tensors (GPT-2: llm.c's layout, so `--init-from` is a copy).

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "tapestry/core/config.hpp"
#include "tapestry/core/flat_run.hpp"
#include "tapestry/core/views.hpp"
#include "tapestry/kernels/attention.hpp"
#include "tapestry/kernels/blas.hpp"
#include "tapestry/kernels/embedding.hpp"
#include "tapestry/model/tensor_parallel.hpp"

namespace tapestry::model {

/// How a tensor is split over the tensor-parallel ranks (Megatron-style).
enum class Split {
  none,  ///< replicated (norms, position embedding, row-parallel biases, QK-norm, xIELU scalars)
  rows,  ///< output rows, block by block (row_blocks): column-parallel weights and their biases,
         ///< q | k | v, gate | up, the vocabulary of the embedding and the output layer
  cols,  ///< input columns: row-parallel weights (attention and MLP output projections)
};

/// How a tensor is initialised (init_random).
enum class Init { zero, one, normal, normal_residual, xielu_alpha };

/// \brief A block of a row-split tensor (whole-model rows): split evenly over the TP ranks, or, with
/// `replicas` > 1, split over tp / replicas groups of `replicas` consecutive ranks that each hold
/// the same rows (key/value heads when tp > n_kv_head: each rank holds the head its q heads use).
struct RowBlock {
  std::int64_t rows = 0;
  int replicas = 1;
};

/// \brief A named piece of a tensor as checkpoints and exports see it: rows [row0, row0 + rows) of
/// the whole tensor (of each layer), under `path` (inside /model/layers/NN/ for per-layer tensors).
struct TensorPart {
  std::string path;
  std::int64_t row0 = 0, rows = 0;
};

/// \brief One parameter tensor inside the flat buffer, derived from the model spec.
struct ParamTensor {
  std::string name;                 ///< short name (llm.c's where GPT-2 has it): wte, qkvw, lm_head, ...
  std::vector<std::int64_t> shape;  ///< all layers stacked first where per-layer (this rank's part)
  std::size_t offset = 0;
  std::size_t size = 0;
  bool decay = false;               ///< weight decay applies (matrices and embeddings)
  Split split = Split::none;
  bool per_layer = false;           ///< shape[0] is the layer
  std::vector<RowBlock> row_blocks;  ///< Split::rows: whole-model row blocks
  std::vector<TensorPart> parts;    ///< its named pieces (whole-model rows)
  Init init = Init::zero;
  /// Replicated, but each TP rank's gradient is a partial sum over its heads or MLP columns
  /// (QK-norm weights, xIELU scalars): summed over the group in backward().
  bool tp_partial = false;
  /// A norm's gain or bias: with sequence parallelism its gradient is a partial sum over the ranks'
  /// token chunks, summed over the group in backward().
  bool token_partial = false;
  /// Rows are the vocabulary (the embedding, the output layer): rows past vocab_size are padding.
  bool vocab_rows = false;

  /// Layers stacked in the tensor (1 when not per layer), and one layer's rows, columns (1 for a
  /// vector) and elements.
  std::size_t layers() const { return per_layer ? std::size_t(shape[0]) : 1; }
  std::size_t rows() const { return std::size_t(shape[per_layer ? 1 : 0]); }
  bool matrix() const { return shape.size() == (per_layer ? 3u : 2u); }  ///< else a vector
  std::size_t cols() const { return matrix() ? std::size_t(shape.back()) : 1; }
  std::size_t layer_size() const { return rows() * cols(); }
};

/// \brief Which part of the network a pipeline stage runs.
struct Stage {
  int first_layer = 0;
  int num_layers = -1;  ///< -1: all layers
  bool embed = true;    ///< the first stage: token and position embeddings
  bool head = true;     ///< the last stage: final LayerNorm, output layer (tied to wte), loss
  bool whole() const { return embed && head; }  ///< the only stage: every layer
};

/// \brief How a GPT instance runs (not what it is: that is ModelConfig).
struct GptOptions {
  const TpGroup* tp = nullptr;     ///< tensor-parallel group (must outlive the model); null: alone
  bool sequence_parallel = false;  ///< with tp: LayerNorm and residual regions split along the tokens
  Stage stage;                     ///< pipeline stage
  /// Attention without the T x T matrices in memory (kernels/attention_tiled.hpp). Off by
  /// default: the BLAS-batched kernel is faster on CPUs and, as measured on an H100 (docs/gpu.md),
  /// on GPUs too; the tiled kernel is for sequences whose T x T matrices do not fit.
  bool tiled_attention = false;
  /// Activations kept for backward stored in bf16 (rounded to nearest even): each layer computes in
  /// fp32 in buffers free at the time (the forward in the backward scratch and one pool) and keeps
  /// a bf16 copy of what backward reads (norm outputs, q/k/v, attention probabilities and output,
  /// MLP pre- and post-activation, the residual stream); backward reads each back into the pool
  /// just before it needs it. The matrix attention computes one sequence of the micro-batch at a
  /// time, so its fp32 T x T working set and scratch hold one sequence. Norm statistics and the
  /// tiled kernel's log-sum-exp stay fp32 per layer, as does the backward scratch. The forward
  /// computes as in fp32. (The output layer keeps no logits in either precision: GPT::forward.)
  bool bf16_activations = false;
  /// The matrix attention's products bf16 x bf16 -> fp32 (kernels::attention_forward_bf16), as
  /// mixed-precision trainers run them: q, k, v and the output gradient rounded once per layer,
  /// the softmax probabilities and the scores' gradient written in bf16 by the softmax kernels
  /// (fp32 inside), the probabilities kept for backward in bf16 (half the memory of the T x T
  /// matrices). The trainer sets it with --precision bf16. Not for the tiled kernel.
  bool bf16_attention = false;
  /// Under bf16 products (forward and backward then require a Blas under Precision::bf16): the
  /// inputs of linear layers that only those layers' products read (the norm outputs, or their
  /// token chunks under sequence parallelism; the attention output, but for the tiled kernel,
  /// whose backward reads it; the MLP's activation output) are kept for backward only as the bf16
  /// copies the products read (Blas::given), not in fp32. The products are the same, bitwise, and
  /// nothing is rounded twice. The layer computes them in fp32 in the backward scratch. The trainer
  /// sets it with --precision bf16. (bf16_activations keeps every such tensor as a copy anyway.)
  bool bf16_linear_inputs = false;
};

/// The parameter tensors the spec `m` implies, in flat-buffer order (GPT-2: exactly llm.c's 16
/// tensors and order): whole (tp = 1, whole stage) or one tensor-parallel rank's part of each
/// (shapes divided along the split dimension) for one pipeline stage (its layers only; tensors the
/// stage does not use have size 0; with tied embeddings the last stage holds a copy of wte).
std::vector<ParamTensor> param_layout(const ModelConfig& m, int tp = 1, const Stage& stage = {});

/// The rows of the output layer's logits computed at once out of `rows` (B*T) for `d_model`
/// inputs and `vocab` (this rank's vocabulary columns): about as many floats as the (rows, d_model)
/// hidden states, at least 256 rows (the product stays efficient), and `rows` (one pass) when that
/// is all of them.
std::int64_t output_chunk_rows(std::int64_t rows, std::int64_t d_model, std::int64_t vocab);

/// Index of tensor `name` in `layout`, or -1.
int find_tensor(const std::vector<ParamTensor>& layout, const std::string& name);

/// Checks that `m` can be split over `tp` ranks (heads, kv heads, MLP, vocabulary); throws tapestry::Error.
void validate_tp(const ModelConfig& m, int tp);

/// \brief Parameters, gradients and the activations of one (B, T) micro-batch.
class GPT {
 public:
  /// The flat parameter and gradient buffers are padded with zeros to a multiple of
  /// `pad_multiple` elements (data-parallel ranks shard them evenly). With a tensor-parallel group
  /// this rank holds its part of every split tensor and the replicated ones whole. Sequence
  /// parallelism splits the LayerNorm and residual regions along the B*T tokens: each rank
  /// computes and keeps B*T / size rows there.
  GPT(const ModelConfig& cfg, int B, int T, std::size_t pad_multiple = 1, const GptOptions& options = {});
  const Stage& stage() const { return stage_; }

  const ModelConfig& config() const { return cfg_; }
  int batch_size() const { return B_; }
  int seq_len() const { return T_; }
  const std::vector<ParamTensor>& tensors() const { return layout_; }
  const TpGroup& tp() const { return *tp_; }
  /// Parameters in llm.c's order, then zero padding: padded_size() elements.
  View1<float> params() const { return params_; }
  View1<float> grads() const { return grads_; }
  std::size_t num_params() const { return n_params_; }
  std::size_t padded_size() const { return params_.extent(0); }

  /// GPT-2 initialisation: N(0, 0.02) weights, residual projections scaled by 1/sqrt(2 n_layer),
  /// zero biases, unit norm gains, xIELU's alpha_p = alpha_n = 0.8. Deterministic in `seed`, and the same model for every
  /// tensor-parallel size; padded vocabulary rows are zero.
  void init_random(std::uint64_t seed);
  /// The tied token embedding when this rank holds a copy of it that another pipeline stage also
  /// holds (first and last stage of a tied model): its gradients are summed between them.
  const ParamTensor* tied_embedding() const;
  /// Flat ranges [begin, end) of this rank's part whose values another rank of its TP group or
  /// pipeline also holds and counts (a kv head replicated over TP ranks, the last stage's copy of a
  /// tied embedding): a sum over all ranks (the gradient norm) skips them.
  const std::vector<std::pair<std::size_t, std::size_t>>& duplicate_ranges() const { return duplicates_; }
  /// Fills this rank's part from a reader of the whole model's flat buffer: read(whole_begin, n,
  /// dst) is called once per contiguous run (a row of a tensor, at most), so a rank reads only the
  /// values it holds and nothing allocates the whole model.
  void load_params_from(const std::function<void(std::size_t whole_begin, std::size_t n, float* dst)>& read);
  /// Copies the whole model's parameters (host, llm.c order) in: this rank takes its part.
  void load_params(const std::vector<float>& host);
  /// The whole model's parameters (llm.c order) from this rank's part of a buffer laid out like
  /// params() (e.g. the parameters, or AdamW's moments): every rank of the tensor-parallel group
  /// gets the whole. Collective over the group.
  std::vector<float> gather_whole(View1<float> local) const;
  /// This rank's part (params() layout, num_params() long) of a whole-model host buffer.
  std::vector<float> take_part(const std::vector<float>& whole) const;
  std::vector<float> params_to_host() const { return gather_whole(params_); }
  /// Where this rank's part (params() layout) sits in the whole model, as contiguous runs sorted
  /// by local index. `owned`: only the elements this rank speaks for in its TP group and pipeline
  /// (a replicated tensor by TP rank 0, a replicated kv head by its first replica, the tied
  /// embedding by the first stage), so that over the TP x PP ranks every whole element appears
  /// exactly once; otherwise every element it holds.
  std::vector<FlatRun> part_runs(bool owned) const;
  /// Parameters of the whole model (llm.c order) and of this rank's part.
  std::size_t whole_num_params() const { return n_whole_; }

  /// Forward pass on inputs and targets (B*T each, row-major (B, T)); returns the mean loss (0 on
  /// a stage without the head). Keeps the activations for backward(). A stage without the
  /// embedding starts from stage_input(), filled by the caller.
  /// With `loss_scale` (training: the scale the following backward() will get) the output layer's
  /// backward runs here, chunk by chunk as its logits are computed (llm.c's fused classifier,
  /// Liger's fused linear cross-entropy): its weight gradient accumulates into grads() and
  /// d loss / d (final norm output) is kept for backward(); no probability matrix is kept. Without
  /// it (evaluation) a later backward() recomputes the logits.
  double forward(const kernels::Blas& blas, const std::vector<int>& inputs, const std::vector<int>& targets,
                 std::optional<double> loss_scale = std::nullopt);
  /// The output layer's logits (B*T rows of vocab_size, row-major, host) for the inputs of the last
  /// forward(), recomputed from the final norm's output. A whole model on one rank (evaluation, tests).
  std::vector<float> logits(const kernels::Blas& blas) const;
  /// Accumulates into grads() the gradient of `loss_scale` * (mean loss of the last forward()); if
  /// that forward() got a loss scale, it must be this one.
  /// A stage without the head starts from output_grad() (d loss / d stage_output()), filled by the
  /// caller; a stage without the embedding leaves d loss / d stage_input() in input_grad().
  void backward(const kernels::Blas& blas, double loss_scale);
  /// Called by backward() once it has issued the work of each layer (this stage's index, from the
  /// last down), e.g. to start summing the gradients complete by then over the DP group while
  /// the lower layers' backward runs (parallel::FlatReducer::layer_done). Empty: none.
  void set_layer_done(std::function<void(int)> f) { layer_done_ = std::move(f); }
  /// The layer (this stage's index) after whose backward() work no gradient in [lo, hi) of the flat
  /// buffer changes any more, or -1 where one changes only at the end of backward(): embeddings
  /// (also a tied output layer), and gradients summed over the TP group. The final norm and an
  /// untied output layer are complete before the layers' backward: their range gives the top layer.
  int grad_ready_after(std::size_t lo, std::size_t hi) const;
  /// Called by forward() before it reads the parameters of the embedding (-1), of layer l (this
  /// stage's index), and of the final norm and output layer (num_layers), e.g. to wait for the
  /// parameters a ZeRO-1 all-gather still brings (parallel::FlatReducer::params_needed). Empty: none.
  void set_layer_begin(std::function<void(int)> f) { layer_begin_ = std::move(f); }
  /// Where forward() first reads a parameter in [lo, hi) of the flat buffer: -1 (the embeddings,
  /// also a tied output layer), a layer l, or num_layers (the final norm, an untied output layer;
  /// also the padding, never read).
  int param_needed_at(std::size_t lo, std::size_t hi) const;
  /// The flat buffer (padded_size()) cut where backward completes gradients: each layer's slice of
  /// each per-layer tensor, every other tensor, the padding; a piece above `max_elems` cut into
  /// pieces of at most that. In order; they tile the buffer.
  std::vector<std::pair<std::size_t, std::size_t>> grad_pieces(std::size_t max_elems) const;
  /// Pipeline stage boundaries, (rows, C): rows = B*T, or B*T / tp with sequence parallelism.
  View2<float> stage_input() const { return encoded_; }
  View2<float> stage_output() const { return layers_.empty() ? encoded_ : layers_.back().res3; }
  View2<float> output_grad() const { return dres_; }
  View2<float> input_grad() const { return dres_; }
  void zero_grad();

  /// Bytes held: parameters + gradients, and activations (incl. backward scratch).
  std::size_t param_bytes() const;
  std::size_t activation_bytes() const;

 private:
  // Without sequence parallelism every "chunk" view below is the full view itself.
  struct LayerActs {
    View2<float> ln1, qkv_raw, qkv, atty, ln2, fch, fch_act;  // (BT, *): inputs and outputs of the split layers
    View2<float> ln1c, ln2c, res2, res3;                 // (BT / size, C): this rank's token chunk
    View1<float> ln1_mean, ln1_rstd, ln2_mean, ln2_rstd;  // (BT / size); means only for LayerNorm
    View2<float> q_rstd, k_rstd;                          // (BT, heads): QK-norm
    View4<float> att;                                              // (B, NH, T, T); empty when tiled
    View3<float> lse;                                              // (B, NH, T): tiled attention
  };
  /// The tensors forward() and backward() use, found by name in the layout (-1: absent).
  struct Slots {
    int wte = -1, wpe = -1, ln1w = -1, ln1b = -1, qkvw = -1, qkvb = -1, qnorm = -1, knorm = -1, attprojw = -1,
        attprojb = -1, ln2w = -1, ln2b = -1, fcw = -1, fcb = -1, fcprojw = -1, fcprojb = -1, xielu = -1,
        lnfw = -1, lnfb = -1, lm_head = -1;
    int output = -1;  ///< the output layer: lm_head, or wte when tied
  };
  void norm_forward(const ExecSpace& ex, View2<float> out, View1<float> mean, View1<float> rstd, View2<float> inp,
                    int w, int b, int layer);
  /// norm_forward writing `out` only as bf16 (kernels::layernorm_forward_bf16), for a copy.
  void norm_forward_bf16(const ExecSpace& ex, std::uint16_t* out, View1<float> mean, View1<float> rstd,
                         View2<float> inp, int w, int b, int layer);
  /// Layer l's MLP activation (cfg_.mlp) of in: into out, or, given y, only as its bf16 copy y
  /// (W: its bits, or bf16 values in floats; bitwise out rounded).
  template <class W = std::uint16_t>
  void activation_forward(const ExecSpace& ex, View2<float> out, View2<float> in, int l, W* y = nullptr);
  /// Its backward: din from dout, into din or, given y, only as its bf16 copy y (xIELU's parameter
  /// gradients accumulate in fp32 either way).
  template <class W = std::uint16_t>
  void activation_backward(const ExecSpace& ex, View2<float> din, View2<float> in, View2<float> dout, int l,
                           W* y = nullptr);
  /// LayerNorm without bias: a zero bias of n (its gradient is discarded).
  View1<float> zero_bias(std::size_t n);
  void norm_backward(const ExecSpace& ex, View2<float> dinp, View2<float> dout, View2<float> inp, View1<float> mean,
                     View1<float> rstd, int w, int b, int layer);
  /// Layout index idx is the final norm's or an untied output layer's (not a layer's, not an
  /// embedding): read after the layers' forward, its gradient complete before their backward.
  bool head_side(int idx) const;
  View2<float> p2(const View1<float>& flat, int idx, int layer = 0) const;
  View1<float> p1(const View1<float>& flat, int idx, int layer = 0) const;  ///< empty when idx < 0

  /// Calls f(tensor index, local flat index, whole-model flat index, owner) for every element of
  /// this rank's part; owner: this rank counts the element for the group (replicated elements have
  /// one owner: TP rank 0, or the first rank of a replica block).
  template <class F> void for_each_element(F&& f) const;
  /// Calls f(tensor index, local flat index, whole-model flat index, n, owner) for every contiguous
  /// run of n elements of this rank's part (a row of a tensor, or its share of one).
  template <class F> void for_each_run(F&& f) const;

  ModelConfig cfg_;
  int B_, T_;
  SoloTp solo_;
  const TpGroup* tp_;
  Stage stage_;
  bool sp_ = false, tiled_ = false;
  int rows_ = 0;  // rows of the token chunk: B*T, or B*T / size with sequence parallelism
  std::vector<ParamTensor> layout_, whole_;
  Slots slot_;
  std::vector<std::pair<std::size_t, std::size_t>> duplicates_;
  int nkv_ = 0, ffn_ = 0;  // this rank's kv heads and MLP columns
  std::size_t n_params_ = 0, n_whole_ = 0;
  View1<float> params_, grads_;
  TokenView tokens_;
  kernels::TokenRows token_rows_;  ///< this batch's tokens grouped by wte row (embedding backward)
  Kokkos::View<int*, Layout, MemSpace> targets_;
  View2<float> encoded_, lnf_, logits_;  // logits (logit_rows_, Vp): one chunk's probs, then dlogits; encoded_ a chunk
  View2<float> emb_full_, lnfc_, projc_, dresf_, dtmpc_;  // full/chunk partners (aliases without SP)
  View2<float> ln_full_;  // sequence parallelism: the all-gathered LayerNorm output, shared by the layers
  struct PartialRange {
    std::size_t offset, size;
    int block;  // summed over blocks of this many TP ranks (the whole group, or a kv head's replicas)
  };
  std::vector<PartialRange> partial_;  // gradients summed over the TP group in backward()
  View1<float> partial_saved_;  // their gradients of earlier micro-batches
  View1<float> lnf_mean_, lnf_rstd_, losses_;
  std::vector<LayerActs> layers_;
  // bf16_activations: each layer's tensors kept for backward as bf16 copies; the layers compute
  // in fp32 views of buffers free at the time (fwd_, bwd_: forward in the backward scratch and
  // pool_, backward in pool_ and dtmp_); res3 is one buffer shared by the layers, res2 lives in
  // dres_ (forward) and pool_ (backward).
  using Half = Kokkos::View<std::uint16_t*, Layout, MemSpace>;
  struct LayerCopies {
    Half ln1c, qkv_raw, qkv, atty, ln2c, fch, fch_act;  // qkv_raw with QK-norm only
    Half att;         // (B, NH, T, T) probabilities, one sequence at a time (matrix attention)
    Half res2, res3;  // the residual stream; res3 of the last layer is not kept (stage output)
  };
  bool stash_ = false;
  // bf16_linear_inputs (without bf16_activations): copies_ hold only ln1c, atty (not tiled), ln2c
  // and fch_act; the layer's fp32 views of them point into the backward scratch.
  bool lin16_ = false;
  std::vector<LayerCopies> copies_;  // [layer]
  // bf16_attention: each layer's probabilities in bf16 (without bf16_activations; with them, the
  // copies' att), and the scratch: q, k, v rounded (without bf16_activations: the copies' qkv
  // serve), the attention output's gradient and the scores' gradient.
  bool bf16_att_ = false;
  std::vector<Half> probs16_;  // [layer]
  Half qkv16_, dout16_, ds16_;
  /// bf16_attention's buffers for layer l: the micro-batch's, or with bf16_activations sequence
  /// b's (q, k, v and the probabilities inside the layer's copies).
  kernels::AttentionBf16 att16(int l, int b) const;
  /// bf16_activations or bf16_linear_inputs, under bf16 products: a linear layer's products read
  /// its input v from the copy h (written from v, so nothing is rounded again, and in backward v is
  /// not read back). None otherwise, or where h is not a copy of all of v (none kept; the norms'
  /// outputs under sequence parallelism, whose copy is of this rank's chunk).
  /// Throws unless the Blas runs bf16 products where bf16_linear_inputs needs them.
  void require_bf16_products(const kernels::Blas& blas) const;
  /// Whether a linear layer's products read its input v from the copy h (see read_copy).
  bool reads_copy(const kernels::Blas& blas, const View2<float>& v, const Half& h) const;
  std::optional<kernels::Blas::Given> read_copy(const kernels::Blas& blas, const View2<float>& v, const Half& h) const;
  View1<float> pool_;
  LayerActs fwd_, bwd_;
  // The output layer runs logit_rows_ rows at a time (model::output_chunk_rows). head_scale_: the
  // loss scale its backward ran with in forward() (d loss / d lnf_ is then in dtmp_); none if not.
  int logit_rows_ = 0;
  std::optional<double> head_scale_;
  std::function<void(int)> layer_done_;   // see set_layer_done()
  std::function<void(int)> layer_begin_;  // see set_layer_begin()
  /// The output layer and the cross-entropy over all rows, chunk by chunk: losses_, and with
  /// `scale` the output weight's gradient and d loss / d lnf_ (into dtmp_).
  void head(const kernels::Blas& blas, std::optional<double> scale);
  /// Rows [r0, r0 + n) of the (B*T, *) tensor v, or one sequence b of a (B, T, *) one.
  static View2<float> rows_of(const View2<float>& v, std::size_t r0, std::size_t n) {
    return View2<float>(v.data() + r0 * v.extent(1), n, v.extent(1));
  }
  static Half half_of(const Half& h, std::size_t i0, std::size_t n) { return Half(h.data() + i0, n); }
  View2<float> proj_, dres_, dtmp_, dbig_, dact_, dqkv_, datty_;  // scratch
  View1<float> ln_zero_bias_, ln_bias_grad_;  // LayerNorm without bias (bias = false)
  View2<float> norm_scratch_;  // the norms' parameter gradients: partial sums over row blocks
  Kokkos::View<int*, Layout, MemSpace> pos_;        // (BT): each row's position, for RoPE
  Kokkos::View<int*, Layout, MemSpace> doc_pos_;    // (BT): position in its document (doc_mask; else empty)
  View2<float> rope_cos_, rope_sin_;  // (T, head_dim / 2): RoPE's rotation per position (kernels::rope_table)
  View4<float> datt_;
  View3<float> xent_stats_;  // (tp, BT, 3): every rank's vocabulary-shard statistics
};

}  // namespace tapestry::model
