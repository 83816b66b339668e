#pragma once
/// \file
/// \brief How gradients are summed over the data-parallel group: a pluggable strategy.
/// The flat one all-reduces in buckets; a hierarchical cross-site one can replace it.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "tapestry/parallel/collectives.hpp"

namespace tapestry::parallel {

/// \brief Sums a flat gradient buffer over the DP group. The caller divides by dp (folded into the
/// optimizer's gradient scale, so no extra pass over memory).
class GradReducer {
 public:
  virtual ~GradReducer() = default;
  virtual std::string describe() const = 0;
  /// grads (n) = sum over DP ranks, in place.
  virtual void all_reduce_sum(float* grads, std::size_t n) = 0;
  /// shard (n / dp) = sum over DP ranks of grads[rank*n/dp, (rank+1)*n/dp); n divisible by dp.
  virtual void reduce_scatter_sum(const float* grads, float* shard, std::size_t n) = 0;
  /// params (n): every rank's shard [rank*n/dp, ...) to all ranks, in place.
  virtual void all_gather(float* params, std::size_t n) = 0;
  /// Bytes this rank has sent to other sites so far (0 where the strategy does not track sites).
  virtual std::uint64_t cross_site_bytes() const { return 0; }
  /// Seconds the calling thread spent in cross-site exchanges so far (hierarchical; 0 where the
  /// cross-site part is not separate).
  virtual double cross_site_seconds() const { return 0; }
};

/// \brief All-reduce in buckets of `bucket_bytes` (the last one shorter), one collective each.
class FlatReducer final : public GradReducer {
 public:
  FlatReducer(Collectives& coll, std::size_t bucket_bytes);
  std::string describe() const override;
  void all_reduce_sum(float* grads, std::size_t n) override;
  void reduce_scatter_sum(const float* grads, float* shard, std::size_t n) override;
  void all_gather(float* params, std::size_t n) override;
  /// With sites: an estimate, not a measurement. It models every collective as a ring in rank
  /// order: 2(P-1)/P of the data (all-reduce) or (P-1)/P (reduce-scatter, all-gather) leaves each
  /// rank towards the next one, and it counts when that next rank is at another site. MPI may pick
  /// another algorithm.
  std::uint64_t cross_site_bytes() const override { return cross_bytes_; }
  /// Tells the estimate whether this rank's ring neighbour (rank + 1 mod P) is at another site.
  void set_next_rank_across_sites(bool across) { next_across_ = across; }

 private:
  Collectives& coll_;
  std::size_t bucket_elems_;
  bool next_across_ = false;
  std::uint64_t cross_bytes_ = 0;
  void count(std::size_t n, double share);
};

}  // namespace tapestry::parallel
