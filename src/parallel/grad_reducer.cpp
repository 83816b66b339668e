#include "tapestry/parallel/grad_reducer.hpp"

#include <algorithm>

#include "tapestry/core/error.hpp"

namespace tapestry::parallel {

FlatReducer::FlatReducer(Collectives& coll, std::size_t bucket_bytes)
    : coll_(coll), bucket_elems_(bucket_bytes / sizeof(float)) {
  require(bucket_elems_ >= 1, "the gradient bucket must hold at least one float (got " +
                                  std::to_string(bucket_bytes) + " bytes)");
}

std::string FlatReducer::describe() const {
  return std::string("flat all-reduce (") + coll_.name() + "), buckets of " +
         std::to_string(bucket_elems_ * sizeof(float) / 1024) + " KiB";
}

void FlatReducer::count(std::size_t n, double share) {
  const double P = coll_.size();
  if (next_across_) cross_bytes_ += std::uint64_t(share * (P - 1) / P * double(n) * sizeof(float));
}

void FlatReducer::all_reduce_sum(float* grads, std::size_t n) {
  if (coll_.size() == 1) return;
  count(n, 2.0);
  for (std::size_t off = 0; off < n; off += bucket_elems_)
    coll_.all_reduce_sum(grads + off, std::min(bucket_elems_, n - off));
}

void FlatReducer::reduce_scatter_sum(const float* grads, float* shard, std::size_t n) {
  const std::size_t p = std::size_t(coll_.size());
  require(n % p == 0, "reduce_scatter_sum: buffer not divisible by the group size");
  count(n, 1.0);
  coll_.reduce_scatter_sum(grads, shard, n / p);
}

void FlatReducer::all_gather(float* params, std::size_t n) {
  const std::size_t p = std::size_t(coll_.size());
  require(n % p == 0, "all_gather: buffer not divisible by the group size");
  if (p > 1) count(n, 1.0);
  if (p > 1) coll_.all_gather_inplace(params, n / p);
}

}  // namespace tapestry::parallel
