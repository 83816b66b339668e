#include "tapestry/train/diloco.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "tapestry/core/error.hpp"
#include "tapestry/kernels/optim.hpp"
#include "text.hpp"

namespace tapestry::train {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
View1<float> sub(View1<float> v, std::size_t lo, std::size_t hi) { return View1<float>(v.data() + lo, hi - lo); }
}  // namespace

Diloco::Diloco(const parallel::SiteTopology& topo, parallel::Backend backend, const ParallelConfig& cfg,
               View1<float> params, parallel::SiteMesh* mesh)
    : topo_(topo),
      cfg_(cfg),
      site_(parallel::make_collectives(backend, topo.site_ranks())),
      cross_(parallel::make_collectives(backend, topo.cross_site())) {
  sched_.H = cfg.outer_steps, sched_.fragments = cfg.outer_fragments, sched_.delay = cfg.outer_delay;
  int level = MPI_THREAD_SINGLE;
  MPI_Query_thread(&level);
  overlap_ = cfg.outer_delay > 0 && cfg.outer_overlap && level == MPI_THREAD_MULTIPLE;
  quota_ = cfg.outer_quota;
  since_send_.assign(std::size_t(sched_.fragments), 0);
  xsum_ = std::make_unique<parallel::CrossSiteSum>(*cross_, topo.cross_site(), kernels::parse_compression(cfg.compress));
  mesh_ = mesh;
  if (topo.elastic()) xsum_->set_elastic(topo.site_ranks(), mesh, topo.site(), topo.num_sites());
  const std::size_t n = params.extent(0), k = std::size_t(site_->size());
  require(n % k == 0, "DiLoCo: the parameter buffer does not divide over the ranks of a site");
  const std::size_t part = n / k;
  begin_ = part * std::size_t(site_->rank());
  outer_ = View1<float>("tapestry::outer_params", part);
  momentum_ = View1<float>("tapestry::outer_momentum", part);
  delta_ = View1<float>("tapestry::pseudo_gradient", part);
  residual_ = View1<float>("tapestry::outer_residual", part);
  if (sched_.fragments > 1 && k > 1) gather_ = View1<float>("tapestry::outer_gather", k * sched_.range(0, part).second + k);
  reset(params);
}

void Diloco::reset(View1<float> params) {
  if (xsum_->in_flight()) xsum_->finish(delta_.data());  // drained; the sum is dropped
  Kokkos::deep_copy(outer_, View1<float>(params.data() + begin_, outer_.extent(0)));
  Kokkos::deep_copy(momentum_, 0.0f);
  Kokkos::deep_copy(residual_, 0.0f);
  pending_frag_ = -1, pending_sent_ = -1, pending_summed_ = false;
}

void Diloco::send(int p, int step, View1<float> params) {
  const ExecSpace ex;
  const auto [lo, hi] = sched_.range(p, outer_.extent(0));
  kernels::pseudo_gradient<float>(ex, sub(outer_, lo, hi), View1<float>(params.data() + begin_ + lo, hi - lo),
                                  sub(delta_, lo, hi));
  ex.fence();
  parallel::CrossSiteSum::Header h;
  h.weight = float(since_send_[std::size_t(p)]), h.value = float(t_self_), h.total = float(computed_);
  since_send_[std::size_t(p)] = 0;
  // Just rejoined: nothing to contribute in this round.
  const bool contribute = joined_at_ < 0 || step >= joined_at_ + sched_.H;
  xsum_->start(delta_.data() + lo, hi - lo, sub(residual_, lo, hi), overlap_, quota_ ? &h : nullptr, contribute);
  pending_summed_ = false;
  if (!overlap_) {  // blocking: the sum is ready now (held until the merge when delay > 0)
    finish_exchange(delta_.data() + lo);
    pending_summed_ = true;
  }
}

void Diloco::finish_exchange(float* out) {
  xsum_->finish(out, quota_ ? &headers_ : nullptr);
  collect_events();  // what the exchange found (a site dropped), before what the merge makes of it
}

bool Diloco::compute_next() {
  if (!quota_) return true;
  int go = 1;
  // Not the fastest site, and slower than it by more than 10%: compute a step only if this
  // window's compute time, with it, stays within 90% of the fastest site's time for the window's
  // steps so far (10% left for noise). A site whose one step takes longer than that for the whole
  // window computes nothing in it.
  if (site_->rank() == 0 && t_min_ > 0 && fastest_site_ != topo_.site() && t_self_ > 1.1 * t_min_)
    go = pace_seconds_ + t_self_ <= 0.9 * double(pace_steps_ + 1) * t_min_ ? 1 : 0;
  MPI_Bcast(&go, 1, MPI_INT, 0, topo_.site_ranks().get());
  return go != 0;
}

void Diloco::step_done(bool computed, double seconds) {
  if (!quota_) return;
  pace_seconds_ += seconds, ++pace_steps_;
  if (!computed) return;
  ++computed_;
  for (auto& c : since_send_) ++c;
  t_self_ = t_self_ > 0 ? 0.8 * t_self_ + 0.2 * seconds : seconds;
}

void Diloco::settle() {
  if (pending_frag_ < 0 || pending_summed_) return;
  const auto lo = sched_.range(pending_frag_, outer_.extent(0)).first;
  finish_exchange(delta_.data() + lo);
  pending_summed_ = true;
}

void Diloco::restore_pending(int step) {
  pending_frag_ = step >= 1 ? sched_.sent_after(step) : -1;
  pending_sent_ = step;
  pending_summed_ = pending_frag_ >= 0;
  require(step < 1 || pending_frag_ >= 0, "DiLoCo: no fragment of this schedule is sent after step " + std::to_string(step));
}

void Diloco::merge(int p, View1<float> params) {
  require(p == pending_frag_, "DiLoCo: fragment " + std::to_string(p) + " is merged but " +
                                  std::to_string(pending_frag_) + " is in flight");
  settle();
  const ExecSpace ex;
  const std::size_t part = outer_.extent(0);
  const auto [lo, hi] = sched_.range(p, part);
  const std::size_t len = hi - lo;
  kernels::OuterStep s;
  s.lr = cfg_.outer_lr, s.momentum = cfg_.outer_momentum, s.nesterov = cfg_.outer_nesterov;
  // weighted: the exchange formed the mean; elastic: the mean over the sites that contributed
  const auto& contrib = xsum_->contributors();
  s.delta_scale = quota_ ? 1.0 : 1.0 / (topo_.elastic() ? std::max<std::size_t>(1, contrib.size()) : topo_.num_sites());
  if (topo_.elastic()) {  // the contributors, when they change: logged and kept for the checkpoint
    std::string who;
    for (int c : contrib) who += (who.empty() ? "" : ",") + std::to_string(c);
    if (who != last_contrib_) {
      contrib_log_ += (contrib_log_.empty() ? "" : ";") + std::to_string(pending_sent_) + ":" + who;
      if (site_->rank() == 0)
        events_ += "outer step of fragment " + std::to_string(p) + " (sent after step " + std::to_string(pending_sent_) +
                   ") sums sites " + (who.empty() ? "none" : who) + "\n";
      last_contrib_ = who;
    }
  }
  kernels::outer_sgd_update<float>(ex, sub(outer_, lo, hi), sub(momentum_, lo, hi), sub(delta_, lo, hi), s);
  report_.clear();
  if (quota_ && !headers_.empty()) {  // the decisions, for the log and the checkpoint
    double fastest = 0;
    site_steps_.clear();
    site_steps_at_ = pending_sent_;
    report_ = "outer merge of fragment " + std::to_string(p) + " (sent after step " + std::to_string(pending_sent_) +
              "): per site weight (steps computed since its last send), ms per step, steps computed:";
    for (std::size_t i = 0; i < headers_.size(); ++i) {
      const auto& h = headers_[i];
      if (h.value > 0 && (fastest == 0 || h.value < fastest)) fastest = h.value, fastest_site_ = int(i);
      site_steps_.push_back(std::int64_t(h.total));
      report_ += " site " + std::to_string(i) + ": " + std::to_string(int(h.weight)) + ", " +
                 detail::fmt("%.1f", 1e3 * h.value) + ", " + std::to_string(std::int64_t(h.total)) + ";";
    }
    t_min_ = fastest;
    pace_seconds_ = 0, pace_steps_ = 0;  // a new window
  }
  View1<float> local(params.data() + begin_ + lo, len);
  if (sched_.delay == 0) Kokkos::deep_copy(ex, local, sub(outer_, lo, hi));
  else kernels::outer_merge<float>(ex, local, sub(outer_, lo, hi), cfg_.outer_mix);
  ex.fence();
  pending_frag_ = -1, pending_sent_ = -1, pending_summed_ = false;
  const std::size_t k = std::size_t(site_->size());
  if (k == 1) return;
  if (len == part) {  // the whole slice: gathered in place
    site_->all_gather_inplace(params.data(), part);
    return;
  }
  // Fragment p of every rank's slice: packed side by side, gathered, put back.
  const std::size_t me = std::size_t(site_->rank());
  Kokkos::deep_copy(ex, View1<float>(gather_.data() + me * len, len), local);
  ex.fence();
  site_->all_gather_inplace(gather_.data(), len);
  for (std::size_t j = 0; j < k; ++j)
    if (j != me) Kokkos::deep_copy(ex, View1<float>(params.data() + j * part + lo, len), View1<float>(gather_.data() + j * len, len));
  ex.fence();
}

double Diloco::after_step(int step, View1<float> params) {
  const auto t0 = std::chrono::steady_clock::now();
  report_.clear();
  const int m = sched_.merged_after(step), p = sched_.sent_after(step);
  const bool at_boundary = topo_.elastic() && step > 0 && step % sched_.H == 0 && step != boundary_done_;
  if (sched_.delay == 0) {
    if (p >= 0) {
      if (at_boundary) boundary(step);
      send(p, step, params);
      pending_frag_ = p, pending_sent_ = step;
      merge(p, params);
    }
  } else {
    if (m >= 0 && m == pending_frag_) merge(m, params);  // else: sent before this run (resumed without DiLoCo state)
    if (at_boundary) boundary(step);
    if (p >= 0) {
      send(p, step, params);
      pending_frag_ = p, pending_sent_ = step;
    }
  }
  return seconds_since(t0);
}

// Only where the mesh is idle: after an exchange has finished, after a boundary, after rejoining.
void Diloco::collect_events() {
  if (mesh_ == nullptr) return;
  for (const auto& e : mesh_->take_events()) events_ += e + "\n";
}

void Diloco::boundary(int step) {
  require(pending_frag_ < 0 || pending_summed_, "DiLoCo: an exchange is in flight at the outer boundary after step " +
                                                    std::to_string(step));
  int info[2] = {0, 0};  // sites admitted; whether this site sends them the state
  if (mesh_ != nullptr) {
    info[0] = int(mesh_->admit(step).size());
    info[1] = mesh_->welcomes() ? 1 : 0;
  }
  collect_events();
  MPI_Bcast(info, 2, MPI_INT, 0, topo_.site_ranks().get());
  if (info[0] == 0 || info[1] == 0) return;
  // The outer parameters and momentum, whole, on the first rank: [n][outer (n)][momentum (n)].
  const std::size_t part = outer_.extent(0), k = std::size_t(site_->size()), n = part * k;
  View1<float> full("tapestry::welcome_state", 2 * n);
  const ExecSpace ex;
  for (int which = 0; which < 2; ++which) {
    View1<float> dst(full.data() + std::size_t(which) * n, n);
    Kokkos::deep_copy(ex, View1<float>(dst.data() + begin_, part), which == 0 ? outer_ : momentum_);
    ex.fence();
    site_->all_gather_inplace(dst.data(), part);
  }
  if (mesh_ == nullptr) return;
  std::vector<char> state(sizeof(std::uint64_t) + 2 * n * sizeof(float));
  const std::uint64_t n64 = n;
  std::memcpy(state.data(), &n64, sizeof(n64));
  Kokkos::View<float*, HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> h(
      reinterpret_cast<float*>(state.data() + sizeof(n64)), 2 * n);
  Kokkos::deep_copy(h, full);
  mesh_->welcome(step, state);
  collect_events();  // a site that could not take the welcome
}

void Diloco::rejoin(int step, const std::vector<char>& state, View1<float> params) {
  const std::size_t part = outer_.extent(0), n = params.extent(0);
  std::uint64_t n64 = 0;
  if (state.size() >= sizeof(n64)) std::memcpy(&n64, state.data(), sizeof(n64));
  require(n64 == n && state.size() == sizeof(n64) + 2 * n * sizeof(float),
          "elastic federation: the state sent for rejoining holds " + std::to_string(n64) + " parameters, this run " +
              std::to_string(n));
  if (xsum_->in_flight()) xsum_->finish(delta_.data());
  Kokkos::View<const float*, HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> h(
      reinterpret_cast<const float*>(state.data() + sizeof(n64)), 2 * n);
  const ExecSpace ex;
  Kokkos::deep_copy(ex, params, Kokkos::subview(h, std::make_pair(std::size_t(0), n)));
  Kokkos::deep_copy(ex, outer_, Kokkos::subview(h, std::make_pair(begin_, begin_ + part)));
  Kokkos::deep_copy(ex, momentum_, Kokkos::subview(h, std::make_pair(n + begin_, n + begin_ + part)));
  Kokkos::deep_copy(ex, residual_, 0.0f);
  ex.fence();
  pending_frag_ = -1, pending_sent_ = -1, pending_summed_ = false;
  joined_at_ = step, boundary_done_ = step;
  collect_events();
}

std::string Diloco::describe() const {
  std::string s = "DiLoCo: outer step every " + std::to_string(cfg_.outer_steps) + " steps, outer lr " +
                  detail::fmt("%g", cfg_.outer_lr) + ", momentum " + detail::fmt("%g", cfg_.outer_momentum) +
                  (cfg_.outer_nesterov ? " (Nesterov)" : "") + ", cross-site compression " +
                  kernels::compression_name(xsum_->compression());
  if (sched_.fragments > 1 || sched_.delay > 0) {
    s += "; streaming: " + std::to_string(sched_.fragments) + " fragment(s) every " +
         std::to_string(cfg_.outer_steps / sched_.fragments) + " step(s)";
    if (sched_.delay > 0)
      s += ", merged " + std::to_string(sched_.delay) + " step(s) after sending (mix " + detail::fmt("%g", cfg_.outer_mix) +
           (overlap_ ? ", exchange on a background thread)" : ", exchange blocking at send)");
  }
  if (quota_) s += "; stragglers keep the fastest site's pace (--outer-quota), merges weighted by steps computed";
  return s + "; " + topo_.describe();
}

}  // namespace tapestry::train
