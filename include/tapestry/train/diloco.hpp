#pragma once
/// \file
/// \brief DiLoCo's outer loop (Douillard et al., "DiLoCo: Distributed Low-Communication Training of
/// Language Models", 2023): every site trains with its own inner AdamW, reducing gradients only
/// inside the site; every H steps the sites average their parameter change (the pseudo-gradient)
/// and apply it with an outer Nesterov-momentum SGD step.
///
/// Streaming DiLoCo (Douillard et al., "Streaming DiLoCo with overlapping communication", 2025):
/// the parameters are split into P fragments, fragment p is synchronised every H steps at offset
/// p * H / P, and its exchange may overlap tau inner steps before it is merged into the local
/// parameters as mix * local + (1 - mix) * outer.

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tapestry/core/config.hpp"
#include "tapestry/core/views.hpp"
#include "tapestry/parallel/collectives.hpp"
#include "tapestry/parallel/hierarchical.hpp"
#include "tapestry/train/outer_schedule.hpp"

namespace tapestry::train {

/// \brief The outer parameters and momentum, sharded over the ranks of a site: rank j of a site
/// owns slice j of the flat buffer and exchanges only that slice with its peers at the other sites
/// (so each site sends over all its ranks' links at once), then the site all-gathers the slices.
/// Fragments are contiguous parts of every rank's slice.
class Diloco {
 public:
  /// `params` (n, divisible by the ranks per site): the starting point of the outer parameters.
  /// Collective over the DP group.
  /// Elastic federation (topo.elastic()): `mesh` is this site's connections to the others, held
  /// by the site's first rank (null on its other ranks).
  Diloco(const parallel::SiteTopology& topo, parallel::Backend backend, const ParallelConfig& cfg,
         View1<float> params, parallel::SiteMesh* mesh = nullptr);

  const OuterSchedule& schedule() const { return sched_; }
  /// True when something crosses sites after inner step `step`.
  bool acts_after(int step) const { return sched_.sent_after(step) >= 0 || sched_.merged_after(step) >= 0; }
  /// After inner step `step`: merges the fragment whose exchange is due (waiting for it), then
  /// sends the fragment due. With delay 0 the exchange is blocking and the new outer parameters
  /// replace the fragment. Returns the seconds spent waiting for cross-site traffic (encoding,
  /// blocking exchange, waiting for a background one). Collective over the DP group.
  double after_step(int step, View1<float> params);
  /// Restarts the outer loop from `params` (zero momentum and residual, nothing in flight): a run
  /// that resumes a non-DiLoCo checkpoint.
  void reset(View1<float> params);

  std::size_t begin() const { return begin_; }  ///< this rank's slice of the flat buffer
  std::size_t end() const { return begin_ + outer_.extent(0); }
  View1<float> outer() const { return outer_; }
  View1<float> momentum() const { return momentum_; }
  /// This rank's error-feedback residual (its site's own; zero without compression).
  View1<float> residual() const { return residual_; }
  /// The summed pseudo-gradient of the fragment in flight, over this rank's slice (meaningful in
  /// that fragment's range); valid after settle().
  View1<float> pending() const { return delta_; }
  /// The step after which the fragment in flight was sent, or -1 when none is.
  int pending_step() const { return pending_frag_ >= 0 ? pending_sent_ : -1; }
  /// Waits for the exchange in flight (if any) and keeps its sum in pending(): before a checkpoint.
  void settle();
  /// After a resume has loaded pending(): the fragment sent after `step` is summed already (-1: none).
  void restore_pending(int step);
  std::uint64_t cross_site_bytes() const { return xsum_->bytes_sent(); }
  std::string describe() const;

  // Stragglers (--outer-quota): a site slower than the fastest by more than 10% (the fastest as of
  // the last merge never skips) computes a step
  // only while its compute time since the last merge stays within the fastest site's time for
  // those steps; every exchange carries the steps each site computed since that fragment was last
  // sent (the merge's weights), its step time, and its steps computed in all.
  /// Whether this site computes the next step (the same answer on all its ranks; collective over
  /// the site). Always true without --outer-quota.
  bool compute_next();
  /// After a step's compute, before after_step(): whether it was computed, and its seconds.
  void step_done(bool computed, double seconds);
  /// After a merge with --outer-quota: one line with every site's weight, step time and steps
  /// computed (else "").
  const std::string& merge_report() const { return report_; }
  /// Steps each site computed, as of the last merge (with --outer-quota; else empty).
  const std::vector<std::int64_t>& site_steps() const { return site_steps_; }
  int site_steps_at() const { return site_steps_at_; }  ///< the step those counts were sent after
  std::int64_t steps_computed() const { return computed_; }

  // Elastic federation: at every outer boundary (step % H == 0, nothing in flight) the members
  // admit sites that (re)start, and the lowest member sends them the outer parameters and
  // momentum. A site that rejoined sends nothing for one round (its pseudo-gradient would be zero)
  // but merges the others' sums, so its outer state stays the same as theirs.
  /// This site rejoins at `step` with a member's state (welcome_state()'s bytes): the outer
  /// parameters become its parameters. Collective over the site; then after_step(step) follows.
  void rejoin(int step, const std::vector<char>& state, View1<float> params);
  /// Decisions of the elastic federation since the last call (drops, admissions, contributors),
  /// one line each (on the site's first rank; empty elsewhere).
  std::string take_events() { return std::exchange(events_, {}); }
  /// Which sites each exchange summed, from the first exchange on, as changes:
  /// "sent-after-step:site,site;..." (elastic federation; else "").
  const std::string& contributors_log() const { return contrib_log_; }
  void set_contributors_log(const std::string& log) { contrib_log_ = log; }

 private:
  const parallel::SiteTopology& topo_;
  ParallelConfig cfg_;
  OuterSchedule sched_;
  bool overlap_ = false;  // exchanges on a thread
  std::unique_ptr<parallel::Collectives> site_, cross_;
  std::unique_ptr<parallel::CrossSiteSum> xsum_;
  std::size_t begin_ = 0;
  View1<float> outer_, momentum_, delta_, residual_, gather_;
  int pending_frag_ = -1, pending_sent_ = -1;
  bool pending_summed_ = false;
  // --outer-quota
  bool quota_ = false;
  std::vector<int> since_send_;  // per fragment: steps computed since it was last sent
  double t_self_ = 0, t_min_ = 0;  // this site's and the fastest site's seconds per computed step (0: unknown)
  int fastest_site_ = -1;          // which site that is (it never skips)
  double pace_seconds_ = 0;
  std::int64_t pace_steps_ = 0, computed_ = 0;  // pace_*: since the last merge
  std::vector<parallel::CrossSiteSum::Header> headers_;  // of the last exchange
  std::vector<std::int64_t> site_steps_;
  int site_steps_at_ = 0;
  std::string report_;
  void finish_exchange(float* out);
  // Elastic federation
  parallel::SiteMesh* mesh_ = nullptr;
  int joined_at_ = -1, boundary_done_ = -1;
  std::string events_, contrib_log_, last_contrib_;
  void boundary(int step);
  void collect_events();

  void send(int p, int step, View1<float> params);
  void merge(int p, View1<float> params);
};

}  // namespace tapestry::train
