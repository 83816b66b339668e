#pragma once
// The model's tensor-parallel group on top of the collectives over a TP communicator (private to
// the train layer: the model sees only model::TpGroup).
#include <map>
#include <memory>
#include <utility>

#include "tapestry/core/error.hpp"

#include "tapestry/model/tensor_parallel.hpp"
#include "tapestry/parallel/collectives.hpp"

namespace tapestry::train::detail {

class CollectivesTp final : public model::TpGroup {
 public:
  /// `comm`: the TP communicator `c` runs on (split into blocks for all_reduce_sum_block).
  CollectivesTp(std::unique_ptr<parallel::Collectives> c, const parallel::Comm& comm, parallel::Backend backend)
      : c_(std::move(c)), comm_(comm), backend_(backend) {}
  int size() const override { return c_->size(); }
  int rank() const override { return c_->rank(); }
  void all_reduce_sum(float* buf, std::size_t n) const override { c_->all_reduce_sum(buf, n); }
  void all_gather_inplace(float* buf, std::size_t n) const override { c_->all_gather_inplace(buf, n); }
  void reduce_scatter_sum(const float* send, float* recv, std::size_t n) const override {
    c_->reduce_scatter_sum(send, recv, n);
  }
  void all_reduce_sum_block(float* buf, std::size_t n, int block) const override {
    if (block <= 1) return;
    if (block == size()) return c_->all_reduce_sum(buf, n);
    require(size() % block == 0, "all_reduce_sum_block: block does not divide the TP group");
    auto it = blocks_.find(block);
    if (it == blocks_.end()) {  // made on first use: every rank of the group gets here together
      Block b;
      b.comm = comm_.split(rank() / block, rank());
      b.coll = parallel::make_collectives(backend_, b.comm);
      it = blocks_.emplace(block, std::move(b)).first;
    }
    it->second.coll->all_reduce_sum(buf, n);
  }

 private:
  struct Block {
    parallel::Comm comm;  // before coll, which uses it
    std::unique_ptr<parallel::Collectives> coll;
  };
  std::unique_ptr<parallel::Collectives> c_;
  const parallel::Comm& comm_;
  parallel::Backend backend_;
  mutable std::map<int, Block> blocks_;
};

}  // namespace tapestry::train::detail
