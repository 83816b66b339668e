#include "tapestry/train/diloco.hpp"

#include "tapestry/core/error.hpp"
#include "tapestry/kernels/optim.hpp"
#include "text.hpp"

namespace tapestry::train {

Diloco::Diloco(const parallel::SiteTopology& topo, parallel::Backend backend, const ParallelConfig& cfg,
               View1<float> params)
    : topo_(topo),
      cfg_(cfg),
      site_(parallel::make_collectives(backend, topo.site_ranks())),
      cross_(parallel::make_collectives(backend, topo.cross_site())) {
  xsum_ = std::make_unique<parallel::CrossSiteSum>(*cross_, kernels::parse_compression(cfg.compress));
  const std::size_t n = params.extent(0), k = std::size_t(site_->size());
  require(n % k == 0, "DiLoCo: the parameter buffer does not divide over the ranks of a site");
  const std::size_t part = n / k;
  begin_ = part * std::size_t(site_->rank());
  outer_ = View1<float>("tapestry::outer_params", part);
  momentum_ = View1<float>("tapestry::outer_momentum", part);
  delta_ = View1<float>("tapestry::pseudo_gradient", part);
  reset(params);
}

void Diloco::reset(View1<float> params) {
  Kokkos::deep_copy(outer_, View1<float>(params.data() + begin_, outer_.extent(0)));
  Kokkos::deep_copy(momentum_, 0.0f);
}

void Diloco::outer_step(View1<float> params) {
  const ExecSpace ex;
  const std::size_t part = outer_.extent(0);
  View1<float> local(params.data() + begin_, part);
  kernels::pseudo_gradient<float>(ex, outer_, local, delta_);
  ex.fence();
  xsum_->sum(delta_.data(), part);  // summed over sites (same value on every rank)
  kernels::OuterStep s;
  s.lr = cfg_.outer_lr, s.momentum = cfg_.outer_momentum, s.nesterov = cfg_.outer_nesterov;
  s.delta_scale = 1.0 / topo_.num_sites();
  kernels::outer_sgd_update<float>(ex, outer_, momentum_, delta_, s);
  Kokkos::deep_copy(ex, local, outer_);
  ex.fence();
  if (site_->size() > 1) site_->all_gather_inplace(params.data(), part);
}

std::string Diloco::describe() const {
  const char* c[] = {"none", "bf16", "int8"};
  return "DiLoCo: outer step every " + std::to_string(cfg_.outer_steps) + " steps, outer lr " +
         detail::fmt("%g", cfg_.outer_lr) + ", momentum " + detail::fmt("%g", cfg_.outer_momentum) +
         (cfg_.outer_nesterov ? " (Nesterov)" : "") + ", cross-site compression " + c[int(xsum_->compression())] +
         "; " + topo_.describe();
}

}  // namespace tapestry::train
