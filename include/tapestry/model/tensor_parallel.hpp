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
};

/// \brief A group of one: no communication.
class SoloTp final : public TpGroup {
 public:
  int size() const override { return 1; }
  int rank() const override { return 0; }
  void all_reduce_sum(float*, std::size_t) const override {}
};

/// Megatron's f, in front of a column-parallel layer: identity in forward; in backward the
/// gradient of its input is summed over the group (each rank saw only its columns' share).
void copy_to_tp_region_backward(const TpGroup& tp, View2<float> dx);

/// Megatron's g, behind a row-parallel layer: in forward the ranks' partial outputs are summed
/// over the group; identity in backward.
void reduce_from_tp_region_forward(const TpGroup& tp, View2<float> y);

}  // namespace tapestry::model
