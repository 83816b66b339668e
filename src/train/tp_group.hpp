#pragma once
// The model's tensor-parallel group on top of the collectives over a TP communicator (private to
// the train layer: the model sees only model::TpGroup).
#include <memory>
#include <utility>

#include "tapestry/model/tensor_parallel.hpp"
#include "tapestry/parallel/collectives.hpp"

namespace tapestry::train::detail {

class CollectivesTp final : public model::TpGroup {
 public:
  explicit CollectivesTp(std::unique_ptr<parallel::Collectives> c) : c_(std::move(c)) {}
  int size() const override { return c_->size(); }
  int rank() const override { return c_->rank(); }
  void all_reduce_sum(float* buf, std::size_t n) const override { c_->all_reduce_sum(buf, n); }
  void all_gather_inplace(float* buf, std::size_t n) const override { c_->all_gather_inplace(buf, n); }
  void reduce_scatter_sum(const float* send, float* recv, std::size_t n) const override {
    c_->reduce_scatter_sum(send, recv, n);
  }

 private:
  std::unique_ptr<parallel::Collectives> c_;
};

}  // namespace tapestry::train::detail
