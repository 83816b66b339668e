#pragma once
/// \file
/// \brief DiLoCo's outer loop (Douillard et al., "DiLoCo: Distributed Low-Communication Training of
/// Language Models", 2023): every site trains with its own inner AdamW, reducing gradients only
/// inside the site; every H steps the sites average their parameter change (the pseudo-gradient)
/// and apply it with an outer Nesterov-momentum SGD step.

#include <cstdint>
#include <memory>
#include <string>

#include "tapestry/core/config.hpp"
#include "tapestry/core/views.hpp"
#include "tapestry/parallel/collectives.hpp"
#include "tapestry/parallel/hierarchical.hpp"

namespace tapestry::train {

/// \brief The outer parameters and momentum, sharded over the ranks of a site: rank j of a site
/// owns slice j of the flat buffer and exchanges only that slice with its peers at the other sites
/// (so each site sends over all its ranks' links at once), then the site all-gathers the slices.
class Diloco {
 public:
  /// `params` (n, divisible by the ranks per site): the starting point of the outer parameters.
  Diloco(const parallel::SiteTopology& topo, parallel::Backend backend, const ParallelConfig& cfg,
         View1<float> params);

  /// True when inner step `step` (1-based) ends a round of H steps.
  bool due(int step) const { return step % cfg_.outer_steps == 0; }
  /// The outer step; afterwards `params` holds the new outer parameters on every rank. Collective
  /// over the DP group.
  void outer_step(View1<float> params);
  /// Restarts the outer loop from `params` (zero momentum): a run that resumes a non-DiLoCo checkpoint.
  void reset(View1<float> params);

  std::size_t begin() const { return begin_; }  ///< this rank's slice of the flat buffer
  std::size_t end() const { return begin_ + outer_.extent(0); }
  View1<float> outer() const { return outer_; }
  View1<float> momentum() const { return momentum_; }
  std::uint64_t cross_site_bytes() const { return xsum_->bytes_sent(); }
  std::string describe() const;

 private:
  const parallel::SiteTopology& topo_;
  ParallelConfig cfg_;
  std::unique_ptr<parallel::Collectives> site_, cross_;
  std::unique_ptr<parallel::CrossSiteSum> xsum_;
  std::size_t begin_ = 0;
  View1<float> outer_, momentum_, delta_;
};

}  // namespace tapestry::train
