#pragma once
/// \file
/// \brief How gradients are summed over the data-parallel group: a pluggable strategy.
/// The flat one all-reduces in buckets; a hierarchical cross-site one can replace it.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

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

  /// \name Overlap with backward (`--overlap-grad-reduce`; Megatron-LM's option of that name, the
  /// buckets of PyTorch's DDP). The flat buffer is cut into pieces where backward completes its
  /// gradients (for the model: each layer's slice of each per-layer tensor, the other tensors; no
  /// piece above the bucket size). A piece's sum starts (Collectives::start_all_reduce_sum) as
  /// soon as backward has written its last gradient, so the sums travel while the lower layers'
  /// backward runs; finish() starts the rest and waits. With ZeRO-1 each piece's part in a rank's
  /// shard is reduced to that rank, which leaves every rank the sum of its shard, as
  /// reduce_scatter_sum. Every rank starts the same pieces in the same order (from the layout).
  ///@{
  /// `started`: collectives over the same ranks (two or more) that this object alone uses (made
  /// over a duplicate of the communicator, so their thread or stream never meets a call on the
  /// caller's).
  /// `pieces`: [lo, hi) ranges that tile [0, n) in order, none longer than the bucket size.
  /// `ready_after(lo, hi)`: the layer whose backward writes the last gradient in [lo, hi) (backward
  /// runs from the last layer down), or -1 where one is written only at the end of backward.
  /// `needed_at(lo, hi)` (ZeRO-1's parameter all-gather, see start_gather): where the next forward
  /// first reads a parameter in [lo, hi): -1 (before the first layer), a layer, or after the last.
  void overlap(std::unique_ptr<Collectives> started, std::size_t n,
               const std::vector<std::pair<std::size_t, std::size_t>>& pieces,
               const std::function<int(std::size_t, std::size_t)>& ready_after,
               const std::function<int(std::size_t, std::size_t)>& needed_at);
  bool overlapped() const { return started_ != nullptr; }
  /// The largest piece overlap() takes: the bucket size.
  std::size_t max_piece() const { return bucket_elems_; }
  /// A step's backward (its last micro-batch) begins: grads (n) will be summed; with ZeRO-1 (shard
  /// not null) into shard (n / ranks) instead, grads left as they are.
  void begin(float* grads, float* shard);
  /// Backward has issued the work of layer l (last to first): starts the pieces complete now.
  void layer_done(int l);
  /// After backward: starts the remaining pieces and waits for all. Returns how many had started
  /// before it was called.
  std::size_t finish();
  /// ZeRO-1, after the optimizer step: starts every rank's updated shard of params (n) out to all
  /// ranks (a broadcast per part of a piece in a rank's shard, as all_gather gives), in the order
  /// the next forward reads them, so that the transfer runs while the forward runs.
  /// params_needed(l) (at forward's layer l, as needed_at) waits for what it reads there;
  /// params_all() for everything (before anything else reads the parameters: a checkpoint).
  void start_gather(float* params);
  void params_needed(int l);
  void params_all();
  bool gathering() const { return gathering_; }
  /// Seconds the calling thread has waited in params_needed()/params_all() so far (NCCL: about 0,
  /// the device waits instead).
  double gather_wait_seconds() const { return gather_wait_s_; }
  std::size_t pieces() const { return pieces_.size(); }
  const char* started_on() const { return started_ ? started_->started_on() : "blocking"; }
  ///@}

 private:
  Collectives& coll_;
  std::size_t bucket_elems_;
  bool next_across_ = false;
  std::uint64_t cross_bytes_ = 0;
  void count(std::size_t n, double share);
  // overlap
  std::unique_ptr<Collectives> started_;
  std::size_t n_ = 0;
  std::vector<std::pair<std::size_t, std::size_t>> pieces_;  ///< in the order they start
  std::vector<int> ready_;  ///< per entry of pieces_: ready_after of its range
  std::size_t next_ = 0;    ///< pieces_ started so far
  float* grads_ = nullptr;
  float* shard_ = nullptr;
  std::vector<std::pair<std::size_t, std::size_t>> gather_;  ///< pieces_ in the order forward reads them
  std::vector<int> need_;  ///< per entry of gather_: needed_at of its range
  std::vector<std::pair<int, std::size_t>> marks_;  ///< started gather: (need, mark after its pieces)
  std::size_t waited_ = 0;  ///< marks_ waited for so far
  bool gathering_ = false;
  double gather_wait_s_ = 0;
  void start(std::size_t lo, std::size_t hi);
  /// f(rank, a, e, first): each part [a, e) of [lo, hi) inside one rank's ZeRO-1 shard, which
  /// starts at flat index `first`.
  template <class F> void shard_parts(std::size_t lo, std::size_t hi, const F& f) const;
};

}  // namespace tapestry::parallel
