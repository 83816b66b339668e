#include "tapestry/parallel/grad_reducer.hpp"

#include <algorithm>
#include <limits>
#include <numeric>

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

namespace {
/// Indices of `key` in order of key (descending or ascending), equal keys in index order.
std::vector<std::size_t> order_by(const std::vector<int>& key, bool descending) {
  std::vector<std::size_t> order(key.size());
  std::iota(order.begin(), order.end(), std::size_t(0));
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return descending ? key[a] > key[b] : key[a] < key[b]; });
  return order;
}
}  // namespace

void FlatReducer::overlap(std::unique_ptr<Collectives> started, std::size_t n,
                          const std::vector<std::pair<std::size_t, std::size_t>>& pieces,
                          const std::function<int(std::size_t, std::size_t)>& ready_after,
                          const std::function<int(std::size_t, std::size_t)>& needed_at) {
  require(started && started->size() == coll_.size(), "FlatReducer::overlap: collectives over another group");
  require(coll_.size() > 1, "FlatReducer::overlap: nothing to overlap at one rank");
  std::size_t at = 0;
  for (const auto& [lo, hi] : pieces) {
    require(lo == at && hi > lo && hi - lo <= bucket_elems_,
            "FlatReducer::overlap: the pieces must tile the buffer in order, none above the bucket size");
    at = hi;
  }
  require(at == n, "FlatReducer::overlap: the pieces end at " + std::to_string(at) + ", not at the buffer's end " +
                       std::to_string(n));
  started_ = std::move(started);
  n_ = n;
  // Backward completes the highest layers first; the parameter all-gather sends what forward reads
  // first, first. Equal keys in flat order.
  std::vector<int> ready, need;
  for (const auto& [lo, hi] : pieces) {
    ready.push_back(ready_after(lo, hi));
    need.push_back(needed_at ? needed_at(lo, hi) : -1);
  }
  pieces_.clear(), ready_.clear(), gather_.clear(), need_.clear();
  for (std::size_t i : order_by(ready, true)) pieces_.push_back(pieces[i]), ready_.push_back(ready[i]);
  for (std::size_t i : order_by(need, false)) gather_.push_back(pieces[i]), need_.push_back(need[i]);
}

template <class F> void FlatReducer::shard_parts(std::size_t lo, std::size_t hi, const F& f) const {
  const std::size_t s = n_ / std::size_t(coll_.size());
  for (std::size_t r = lo / s; r * s < hi; ++r) f(int(r), std::max(lo, r * s), std::min(hi, (r + 1) * s), r * s);
}

void FlatReducer::start_gather(float* params) {
  require(overlapped(), "FlatReducer::start_gather: overlap() was not called");
  params_all();  // (a previous one not waited for)
  marks_.clear(), waited_ = 0;
  for (std::size_t i = 0; i < gather_.size(); ++i) {
    const auto [lo, hi] = gather_[i];
    count(hi - lo, 1.0);
    shard_parts(lo, hi, [&](int r, std::size_t a, std::size_t e, std::size_t) {
      started_->start_broadcast(params + a, e - a, r);
    });
    if (i + 1 == gather_.size() || need_[i + 1] != need_[i]) marks_.emplace_back(need_[i], started_->started_mark());
  }
  gathering_ = true;
}

void FlatReducer::params_needed(int l) {
  if (!gathering_) return;
  std::size_t k = waited_;
  while (k < marks_.size() && marks_[k].first <= l) ++k;
  if (k == waited_) return;
  const double t0 = MPI_Wtime();
  started_->wait_started(marks_[k - 1].second);
  gather_wait_s_ += MPI_Wtime() - t0;
  waited_ = k;
  gathering_ = waited_ < marks_.size();
}

void FlatReducer::params_all() {
  if (gathering_) params_needed(std::numeric_limits<int>::max());
}

void FlatReducer::begin(float* grads, float* shard) {
  require(overlapped(), "FlatReducer::begin: overlap() was not called");
  require(grads_ == nullptr, "FlatReducer::begin: the previous step's sum was not finished");
  grads_ = grads, shard_ = shard, next_ = 0;
}

void FlatReducer::start(std::size_t lo, std::size_t hi) {
  const std::size_t len = hi - lo;
  if (shard_ == nullptr) {
    count(len, 2.0);
    started_->start_all_reduce_sum(grads_ + lo, len);
    return;
  }
  count(len, 1.0);
  shard_parts(lo, hi, [&](int r, std::size_t a, std::size_t e, std::size_t first) {
    started_->start_reduce_sum(grads_ + a, r == coll_.rank() ? shard_ + (a - first) : nullptr, e - a, r);
  });
}

void FlatReducer::layer_done(int l) {
  require(grads_ != nullptr, "FlatReducer::layer_done: no step begun");
  for (; next_ < pieces_.size() && ready_[next_] >= l; ++next_) start(pieces_[next_].first, pieces_[next_].second);
}

std::size_t FlatReducer::finish() {
  require(grads_ != nullptr, "FlatReducer::finish: no step begun");
  params_all();  // (forward waited for them all already; a mark is valid until wait_started())
  const std::size_t early = next_;
  for (; next_ < pieces_.size(); ++next_) start(pieces_[next_].first, pieces_[next_].second);
  grads_ = shard_ = nullptr;
  started_->wait_started();
  return early;
}

}  // namespace tapestry::parallel
