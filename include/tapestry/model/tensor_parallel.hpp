#pragma once
/// \file
/// \brief What the model needs from its tensor-parallel group, and Megatron's two communication
/// operators. Abstract, so the model layer never sees a communicator.

#include <cstddef>

#include "tapestry/core/views.hpp"

namespace tapestry::model {

/// \brief The ranks that share one copy of the model, each holding 1/size of every split tensor.
class TpGroup {
 public:
  virtual ~TpGroup() = default;
  virtual int size() const = 0;
  virtual int rank() const = 0;
  /// buf (n, device memory) = sum over the group, in place. Collective.
  virtual void all_reduce_sum(float* buf, std::size_t n) const = 0;
  /// buf (size() * n): every rank's block [rank * n, (rank + 1) * n) to all, in place. Collective.
  virtual void all_gather_inplace(float* buf, std::size_t n) const = 0;
  /// recv (n) = sum over the group of send[rank * n, (rank + 1) * n). Collective.
  virtual void reduce_scatter_sum(const float* send, float* recv, std::size_t n) const = 0;
  /// buf (n) = sum over this rank's block of `block` consecutive ranks (block divides size()), in
  /// place: the ranks that hold the same replicated key/value head. Collective over the group.
  virtual void all_reduce_sum_block(float* buf, std::size_t n, int block) const = 0;
};

/// \brief A group of one: no communication.
class SoloTp final : public TpGroup {
 public:
  int size() const override { return 1; }
  int rank() const override { return 0; }
  void all_reduce_sum(float*, std::size_t) const override {}
  void all_gather_inplace(float*, std::size_t) const override {}
  void reduce_scatter_sum(const float* send, float* recv, std::size_t n) const override;
  void all_reduce_sum_block(float*, std::size_t, int) const override {}
};

/// Megatron's f, in front of a column-parallel layer: identity in forward; in backward the
/// gradient of its input is summed over the group (each rank saw only its columns' share).
void copy_to_tp_region_backward(const TpGroup& tp, View2<float> dx);

/// Megatron's g, behind a row-parallel layer: in forward the ranks' partial outputs are summed
/// over the group; identity in backward.
void reduce_from_tp_region_forward(const TpGroup& tp, View2<float> y);

/// Sequence parallelism's f: the sequence chunks (N / size rows each) of a LayerNorm's output are
/// all-gathered into the full (N, C) input of a column-parallel layer. Its backward is
/// reduce_scatter_to_sequence_region.
void gather_from_sequence_region(const TpGroup& tp, View2<float> chunk, View2<float> full);

/// Sequence parallelism's g: a row-parallel layer's partial outputs (N, C) are summed and
/// scattered by sequence chunk. Its backward is gather_from_sequence_region.
void reduce_scatter_to_sequence_region(const TpGroup& tp, View2<float> full, View2<float> chunk);

}  // namespace tapestry::model
