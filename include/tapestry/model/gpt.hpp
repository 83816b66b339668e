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

namespace tapestry::model {

/// \brief One named parameter tensor inside the flat buffer.
struct ParamTensor {
  std::string name;                 ///< llm.c's name: wte, wpe, ln1w, ..., lnfb
  std::vector<std::int64_t> shape;  ///< all layers stacked first where per-layer
  std::size_t offset = 0;
  std::size_t size = 0;
  bool decay = false;               ///< weight decay applies (matrices and embeddings)
};

/// The 16 tensors of llm.c's layout for this shape, in order.
std::vector<ParamTensor> param_layout(const ModelConfig& m);

/// \brief Parameters, gradients and the activations of one (B, T) micro-batch.
class GPT {
 public:
  /// The flat parameter and gradient buffers are padded with zeros to a multiple of
  /// `pad_multiple` elements (data-parallel ranks shard them evenly).
  GPT(const ModelConfig& cfg, int B, int T, std::size_t pad_multiple = 1);

  const ModelConfig& config() const { return cfg_; }
  int batch_size() const { return B_; }
  int seq_len() const { return T_; }
  const std::vector<ParamTensor>& tensors() const { return layout_; }
  /// Parameters in llm.c's order, then zero padding: padded_size() elements.
  View1<float> params() const { return params_; }
  View1<float> grads() const { return grads_; }
  std::size_t num_params() const { return n_params_; }
  std::size_t padded_size() const { return params_.extent(0); }

  /// GPT-2 initialisation: N(0, 0.02) weights, residual projections scaled by 1/sqrt(2 n_layer),
  /// zero biases, unit LayerNorm gains. Deterministic in `seed`; padded vocabulary rows are zero.
  void init_random(std::uint64_t seed);
  /// Copies host parameters (llm.c order) in.
  void load_params(const std::vector<float>& host);
  std::vector<float> params_to_host() const;

  /// Forward pass on inputs and targets (B*T each, row-major (B, T)); returns the mean loss.
  /// Keeps the activations for backward().
  double forward(const kernels::Blas& blas, const std::vector<int>& inputs,
                 const std::vector<int>& targets);
  /// Accumulates into grads() the gradient of `loss_scale` * (mean loss of the last forward()).
  void backward(const kernels::Blas& blas, double loss_scale);
  void zero_grad();

  /// Bytes held: parameters + gradients, and activations (incl. backward scratch).
  std::size_t param_bytes() const;
  std::size_t activation_bytes() const;

 private:
  struct LayerActs {
    View2<float> ln1, qkv, atty, res2, ln2, fch, fch_gelu, res3;  // (BT, *)
    View1<float> ln1_mean, ln1_rstd, ln2_mean, ln2_rstd;          // (BT)
    View4<float> att;                                              // (B, NH, T, T)
  };
  View2<float> p2(const View1<float>& flat, int idx, int layer = 0) const;
  View1<float> p1(const View1<float>& flat, int idx, int layer = 0) const;

  ModelConfig cfg_;
  int B_, T_;
  std::vector<ParamTensor> layout_;
  std::size_t n_params_ = 0;
  View1<float> params_, grads_;
  TokenView tokens_;
  Kokkos::View<int*, Layout, MemSpace> targets_;
  View2<float> encoded_, lnf_, logits_;  // logits (BT, Vp) hold probs, then dlogits
  View1<float> lnf_mean_, lnf_rstd_, losses_;
  std::vector<LayerActs> layers_;
  View2<float> proj_, dres_, dtmp_, dbig_, dqkv_;  // scratch
  View4<float> datt_;
};

}  // namespace tapestry::model
