#include "tapestry/parallel/hierarchical.hpp"

#include <cstdlib>

#include "tapestry/core/error.hpp"

namespace tapestry::parallel {

int SiteTopology::site_of(int rank, int world, int num_sites) {
  if (const char* env = std::getenv("TAPESTRY_SITE")) {
    char* end = nullptr;
    const long s = std::strtol(env, &end, 10);
    require(end != env && *end == '\0' && s >= 0 && s < num_sites,
            "TAPESTRY_SITE='" + std::string(env) + "' is not a site number in [0, " + std::to_string(num_sites) + ")");
    return int(s);
  }
  require(num_sites >= 1 && world % num_sites == 0,
          "--sites " + std::to_string(num_sites) + " does not divide the " + std::to_string(world) + " data-parallel ranks");
  return rank / (world / num_sites);
}

SiteTopology::SiteTopology(const Comm& dp, int site, int num_sites) : site_(site), num_sites_(num_sites) {
  site_comm_ = dp.split(site, dp.rank());
  node_ = site_comm_.split_shared();
  // site_nodes: same node-local index inside the site; cross: same position inside the site.
  site_nodes_ = site_comm_.split(node_.rank(), site_comm_.rank());
  cross_ = dp.split(site_comm_.rank(), site);
  // Every site must have the same shape, or the pieces would not line up.
  int mine[3] = {site_comm_.size(), node_.size(), site_nodes_.size()}, lo[3], hi[3];
  MPI_Allreduce(mine, lo, 3, MPI_INT, MPI_MIN, dp.get());
  MPI_Allreduce(mine, hi, 3, MPI_INT, MPI_MAX, dp.get());
  require(lo[0] == hi[0] && lo[1] == hi[1] && lo[2] == hi[2] && cross_.size() == num_sites,
          "sites differ in size or shape (ranks per site " + std::to_string(lo[0]) + ".." + std::to_string(hi[0]) +
              ", ranks per node " + std::to_string(lo[1]) + ".." + std::to_string(hi[1]) + ")");
}

std::string SiteTopology::describe() const {
  return std::to_string(num_sites_) + " site(s) x " + std::to_string(site_nodes_.size()) + " node(s) x " +
         std::to_string(node_.size()) + " rank(s) per node";
}

HierarchicalReducer::HierarchicalReducer(const SiteTopology& topo, Backend backend, Collectives& dp_flat,
                                         kernels::Compression compression)
    : topo_(topo),
      node_(make_collectives(backend, topo.node())),
      site_(make_collectives(backend, topo.site_nodes())),
      cross_(make_collectives(backend, topo.cross_site())),
      site_all_(make_collectives(backend, topo.site_ranks())),
      flat_(dp_flat),
      xsum_(*cross_, compression) {}

std::string HierarchicalReducer::describe() const {
  return std::string("hierarchical all-reduce (") + flat_.name() + "), " + topo_.describe() +
         ", cross-site compression " + kernels::compression_name(xsum_.compression());
}

CrossSiteSum::CrossSiteSum(Collectives& cross, kernels::Compression compression)
    : cross_(cross), compression_(compression) {}

void CrossSiteSum::sum(float* piece, std::size_t n) {
  const std::size_t S = std::size_t(cross_.size());
  if (S == 1) return;
  if (compression_ == kernels::Compression::none) {
    cross_.all_reduce_sum(piece, n);
    bytes_ += 2 * (S - 1) * n * sizeof(float) / S;  // ring all-reduce: 2(S-1)/S of the data
    return;
  }
  const std::size_t bytes = kernels::compressed_bytes(compression_, n), words = (bytes + 3) / 4;
  if (residual_.extent(0) != n) residual_ = View1<float>("tapestry::xsite_residual", n);  // zero: no error yet
  if (payload_.extent(0) < S * words) payload_ = View1<float>("tapestry::xsite_payload", S * words);
  const ExecSpace ex;
  auto* mine = reinterpret_cast<std::uint8_t*>(payload_.data() + std::size_t(cross_.rank()) * words);
  kernels::compress_with_feedback(ex, compression_, View1<float>(piece, n), residual_, mine);
  cross_.all_gather_inplace(payload_.data(), words);
  View1<float> acc(piece, n);
  Kokkos::deep_copy(ex, acc, 0.0f);
  for (std::size_t s = 0; s < S; ++s)  // site order: the same sum on every rank
    kernels::decompress_add(ex, compression_, reinterpret_cast<const std::uint8_t*>(payload_.data() + s * words), acc);
  ex.fence();
  bytes_ += (S - 1) * bytes;
}

const float* HierarchicalReducer::sum_into_scratch(const float* grads, std::size_t n) {
  const std::size_t L = std::size_t(node_->size()), M = std::size_t(site_->size());
  const std::size_t parts = L * M, padded = (n + parts - 1) / parts * parts;
  if (scratch_.extent(0) < padded) {
    scratch_ = View1<float>("tapestry::hier_scratch", padded);
    piece_ = View1<float>("tapestry::hier_piece", padded / L);
  }
  View1<float> buf(scratch_.data(), padded);
  Kokkos::deep_copy(View1<float>(buf.data(), n), View1<float>(const_cast<float*>(grads), n));
  if (padded > n) Kokkos::deep_copy(View1<float>(buf.data() + n, padded - n), 0.0f);
  const std::size_t node_piece = padded / L, site_piece = node_piece / M;
  float* p = piece_.data();
  // 1) node: my 1/L;  2) site's nodes: my 1/(L*M) of it;  3) across sites: that piece, summed.
  node_->reduce_scatter_sum(buf.data(), p, node_piece);
  float* q = buf.data();  // reuse the front of the scratch for the site-level piece
  site_->reduce_scatter_sum(p, q, site_piece);
  xsum_.sum(q, site_piece);
  // 4) back up: site's nodes, then node.
  Kokkos::deep_copy(View1<float>(p + std::size_t(site_->rank()) * site_piece, site_piece), View1<float>(q, site_piece));
  site_->all_gather_inplace(p, site_piece);
  Kokkos::deep_copy(View1<float>(buf.data() + std::size_t(node_->rank()) * node_piece, node_piece),
                    View1<float>(p, node_piece));
  node_->all_gather_inplace(buf.data(), node_piece);
  return buf.data();
}

void HierarchicalReducer::all_reduce_sum(float* grads, std::size_t n) {
  const float* sum = sum_into_scratch(grads, n);
  Kokkos::deep_copy(View1<float>(grads, n), View1<float>(const_cast<float*>(sum), n));
}

void HierarchicalReducer::reduce_scatter_sum(const float* grads, float* shard, std::size_t n) {
  const std::size_t P = std::size_t(site_all_->size());
  require(n % P == 0, "reduce_scatter_sum: buffer not divisible by the ranks of a site");
  const float* sum = sum_into_scratch(grads, n);
  const std::size_t s = n / P;
  Kokkos::deep_copy(View1<float>(shard, s), View1<float>(const_cast<float*>(sum) + std::size_t(site_all_->rank()) * s, s));
}

void HierarchicalReducer::all_gather(float* params, std::size_t n) {
  const std::size_t P = std::size_t(site_all_->size());
  require(n % P == 0, "all_gather: buffer not divisible by the ranks of a site");
  if (P > 1) site_all_->all_gather_inplace(params, n / P);
}

}  // namespace tapestry::parallel
