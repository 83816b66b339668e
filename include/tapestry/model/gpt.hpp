#pragma once
/// \file
/// \brief GPT-2: token + position embeddings, pre-LayerNorm blocks (causal attention, GELU MLP),
/// final LayerNorm, output layer tied to the token embedding. fp32 parameters in one flat buffer
/// laid out as llm.c's checkpoints (so `--init-from` is a single copy).

#include <cstdint>
#include <string>
#include <vector>

#include "tapestry/core/config.hpp"
#include "tapestry/core/views.hpp"
#include "tapestry/kernels/blas.hpp"
#include "tapestry/kernels/embedding.hpp"
#include "tapestry/model/tensor_parallel.hpp"

namespace tapestry::model {

/// How a tensor is split over the tensor-parallel ranks (Megatron-style).
enum class Split {
  none,     ///< replicated (LayerNorms, position embedding, row-parallel biases)
  rows,     ///< output rows: column-parallel weights and their biases, the vocabulary of wte
  rows_qkv, ///< the q, k and v row blocks each split by heads
  cols,     ///< input columns: row-parallel weights (attention and MLP output projections)
};

/// \brief One named parameter tensor inside the flat buffer.
struct ParamTensor {
  std::string name;                 ///< llm.c's name: wte, wpe, ln1w, ..., lnfb
  std::vector<std::int64_t> shape;  ///< all layers stacked first where per-layer (this rank's part)
  std::size_t offset = 0;
  std::size_t size = 0;
  bool decay = false;               ///< weight decay applies (matrices and embeddings)
  Split split = Split::none;
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
};

/// The 16 tensors of llm.c's layout for this shape, in order: whole (tp = 1, whole stage) or one
/// tensor-parallel rank's part of each (shapes divided along the split dimension) for one pipeline
/// stage (its layers only; tensors the stage does not use have size 0; the last stage holds a
/// copy of wte for the tied output layer).
std::vector<ParamTensor> param_layout(const ModelConfig& m, int tp = 1, const Stage& stage = {});

/// Checks that `m` can be split over `tp` ranks (heads, vocabulary); throws tapestry::Error.
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
  /// zero biases, unit LayerNorm gains. Deterministic in `seed`, and the same model for every
  /// tensor-parallel size; padded vocabulary rows are zero.
  void init_random(std::uint64_t seed);
  /// Copies the whole model's parameters (host, llm.c order) in: this rank takes its part.
  void load_params(const std::vector<float>& host);
  /// The whole model's parameters (llm.c order) from this rank's part of a buffer laid out like
  /// params() (e.g. the parameters, or AdamW's moments): every rank of the tensor-parallel group
  /// gets the whole. Collective over the group.
  std::vector<float> gather_whole(View1<float> local) const;
  /// This rank's part (params() layout, num_params() long) of a whole-model host buffer.
  std::vector<float> take_part(const std::vector<float>& whole) const;
  std::vector<float> params_to_host() const { return gather_whole(params_); }
  /// Parameters of the whole model (llm.c order) and of this rank's part.
  std::size_t whole_num_params() const { return n_whole_; }

  /// Forward pass on inputs and targets (B*T each, row-major (B, T)); returns the mean loss (0 on
  /// a stage without the head). Keeps the activations for backward(). A stage without the
  /// embedding starts from stage_input(), filled by the caller.
  double forward(const kernels::Blas& blas, const std::vector<int>& inputs,
                 const std::vector<int>& targets);
  /// Accumulates into grads() the gradient of `loss_scale` * (mean loss of the last forward()).
  /// A stage without the head starts from output_grad() (d loss / d stage_output()), filled by the
  /// caller; a stage without the embedding leaves d loss / d stage_input() in input_grad().
  void backward(const kernels::Blas& blas, double loss_scale);
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
    View2<float> ln1, qkv, atty, ln2, fch, fch_gelu;     // (BT, *): inputs and outputs of the split layers
    View2<float> ln1c, ln2c, res2, res3;                 // (BT / size, C): this rank's token chunk
    View1<float> ln1_mean, ln1_rstd, ln2_mean, ln2_rstd;  // (BT / size)
    View4<float> att;                                              // (B, NH, T, T); empty when tiled
    View3<float> lse;                                              // (B, NH, T): tiled attention
  };
  View2<float> p2(const View1<float>& flat, int idx, int layer = 0) const;
  View1<float> p1(const View1<float>& flat, int idx, int layer = 0) const;

  /// Calls f(local flat index, whole-model flat index) for every element of this rank's part.
  template <class F> void for_each_element(F&& f) const;

  ModelConfig cfg_;
  int B_, T_;
  SoloTp solo_;
  const TpGroup* tp_;
  Stage stage_;
  bool sp_ = false, tiled_ = false;
  int rows_ = 0;  // rows of the token chunk: B*T, or B*T / size with sequence parallelism
  std::vector<ParamTensor> layout_, whole_;
  std::size_t n_params_ = 0, n_whole_ = 0;
  View1<float> params_, grads_;
  TokenView tokens_;
  kernels::TokenRows token_rows_;  ///< this batch's tokens grouped by wte row (embedding backward)
  Kokkos::View<int*, Layout, MemSpace> targets_;
  View2<float> encoded_, lnf_, logits_;  // logits (BT, Vp) hold probs, then dlogits; encoded_ a chunk
  View2<float> emb_full_, lnfc_, projc_, dresf_, dtmpc_;  // full/chunk partners (aliases without SP)
  View2<float> ln_full_;  // sequence parallelism: the all-gathered LayerNorm output, shared by the layers
  View1<float> ln_grad_saved_;  // sequence parallelism: LayerNorm gradients of earlier micro-batches
  View1<float> lnf_mean_, lnf_rstd_, losses_;
  std::vector<LayerActs> layers_;
  View2<float> proj_, dres_, dtmp_, dbig_, dqkv_, datty_;  // scratch
  View4<float> datt_;
  View3<float> xent_stats_;  // (tp, BT, 3): every rank's vocabulary-shard statistics
};

}  // namespace tapestry::model
