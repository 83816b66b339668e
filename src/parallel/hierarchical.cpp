#include "tapestry/parallel/hierarchical.hpp"

#include <cstdlib>

#include "tapestry/core/error.hpp"
#include "tapestry/parallel/large_count.hpp"

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

SiteTopology SiteTopology::alone(const Comm& dp, int site, int num_sites) {
  SiteTopology t;
  t.site_ = site, t.num_sites_ = num_sites, t.elastic_ = true;
  t.site_comm_ = dp.split(0, dp.rank());
  t.node_ = t.site_comm_.split_shared();
  t.site_nodes_ = t.site_comm_.split(t.node_.rank(), t.site_comm_.rank());
  t.cross_ = dp.split(dp.rank(), 0);
  return t;
}

std::string SiteTopology::describe() const {
  if (elastic_)
    return "site " + std::to_string(site_) + " of " + std::to_string(num_sites_) +
           " (elastic federation: the others over TCP) x " + std::to_string(site_nodes_.size()) + " node(s) x " +
           std::to_string(node_.size()) + " rank(s) per node";
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
      xsum_(*cross_, topo.cross_site(), compression) {}

std::string HierarchicalReducer::describe() const {
  return std::string("hierarchical all-reduce (") + flat_.name() + "), " + topo_.describe() +
         ", cross-site compression " + kernels::compression_name(xsum_.compression());
}

namespace {
Comm duplicate(const Comm& c) {
  MPI_Comm d = MPI_COMM_NULL;
  MPI_Comm_dup(c.get(), &d);
  // A failure on the exchange thread must not pass unseen (federated communicators return errors).
  MPI_Comm_set_errhandler(d, MPI_ERRORS_ARE_FATAL);
  return Comm::adopt(d);
}
/// Adds the seconds from its construction to its end to `total`.
struct Timed {
  double& total;
  double t0;
  ~Timed() { total += MPI_Wtime() - t0; }
};
constexpr bool kHostPayload = Kokkos::SpaceAccessibility<Kokkos::HostSpace, MemSpace>::accessible;
}  // namespace

CrossSiteSum::CrossSiteSum(Collectives& cross, const Comm& cross_comm, kernels::Compression compression)
    : cross_(cross), thread_comm_(duplicate(cross_comm)), compression_(compression) {}

void CrossSiteSum::set_elastic(const Comm& site, SiteMesh* mesh, int site_id, int sites) {
  thread_comm_ = duplicate(site);
  mesh_ = mesh, elastic_ = true, site_id_ = site_id, sites_ = sites;
}

void CrossSiteSum::exchange_elastic(float* wire, std::size_t words, MPI_Comm site) {
  int k = 1, r = 0;
  MPI_Comm_size(site, &k);
  MPI_Comm_rank(site, &r);
  const std::size_t me = std::size_t(site_id_), K = std::size_t(k);
  float* own = wire + me * words;
  constexpr int kTag = 77;
  // 1) This site's blocks, rank order, on its first rank.
  std::vector<char> mine;
  if (contribute_) {
    if (r == 0) {
      mine.resize(K * words * sizeof(float));
      auto* m = reinterpret_cast<float*>(mine.data());
      std::copy(own, own + words, m);
      for (int q = 1; q < k; ++q) parallel::recv(m + std::size_t(q) * words, words, MPI_FLOAT, sizeof(float), q, kTag, site);
    } else {
      parallel::send(own, words, MPI_FLOAT, sizeof(float), 0, kTag, site);
    }
  }
  // 2) The first ranks exchange them; 3) which sites count, to every rank.
  std::vector<std::vector<char>> got;
  std::vector<int> contrib;
  if (r == 0) {
    const std::uint64_t before = mesh_->bytes_sent();
    got = mesh_->all_gather(mine);
    thread_bytes_ = mesh_->bytes_sent() - before;
    for (std::size_t s = 0; s < got.size(); ++s)
      if (!got[s].empty()) {
        require(got[s].size() == K * words * sizeof(float), "elastic federation: site " + std::to_string(s) +
                                                                 " sent " + std::to_string(got[s].size()) +
                                                                 " bytes for a payload of " +
                                                                 std::to_string(K * words * sizeof(float)));
        contrib.push_back(int(s));
      }
  }
  int c = int(contrib.size());
  MPI_Bcast(&c, 1, MPI_INT, 0, site);
  contrib.resize(std::size_t(c));
  MPI_Bcast(contrib.data(), c, MPI_INT, 0, site);
  // 4) Every rank its part of each other site's block.
  for (int s : contrib) {
    if (std::size_t(s) == me) continue;  // its own part is in place
    float* dst = wire + std::size_t(s) * words;
    if (r == 0) {
      const auto* b = reinterpret_cast<const float*>(got[std::size_t(s)].data());
      std::copy(b, b + words, dst);
      for (int q = 1; q < k; ++q) parallel::send(b + std::size_t(q) * words, words, MPI_FLOAT, sizeof(float), q, kTag, site);
    } else {
      parallel::recv(dst, words, MPI_FLOAT, sizeof(float), 0, kTag, site);
    }
  }
  contrib_ = std::move(contrib);
}

CrossSiteSum::~CrossSiteSum() {
  if (worker_.joinable()) worker_.join();
}

void CrossSiteSum::sum(float* buf, std::size_t n, View1<float> residual) {
  if (cross_.size() == 1) return;
  if (compression_ == kernels::Compression::none) {  // in place, no copy
    const Timed timed{seconds_, MPI_Wtime()};
    cross_.all_reduce_sum(buf, n);
    bytes_ += 2 * (std::size_t(cross_.size()) - 1) * n * sizeof(float) / std::size_t(cross_.size());
    return;
  }
  if (residual.extent(0) == 0) {
    if (residual_.extent(0) != n) residual_ = View1<float>("tapestry::xsite_residual", n);  // zero: no error yet
    residual = residual_;
  }
  start(buf, n, residual, false);
  finish(buf);
}

void CrossSiteSum::start(const float* buf, std::size_t n, View1<float> residual, bool background, const Header* header,
                         bool contribute) {
  require(n_ == 0, "CrossSiteSum: an exchange is already in flight");
  const Timed timed{seconds_, MPI_Wtime()};  // every return below counts its time
  const std::size_t S = sites(), me = std::size_t(elastic_ ? site_id_ : cross_.rank());
  weighted_ = header != nullptr;
  contribute_ = contribute || !elastic_;
  // all-reduced in place (elastic: always gathered, the sum is over the sites that got through)
  const bool plain = plain_ = compression_ == kernels::Compression::none && !weighted_ && !elastic_;
  const std::size_t head = weighted_ ? 3 : 0;  // words of the header
  const std::size_t bytes = plain ? n * sizeof(float) : kernels::compressed_bytes(compression_, n);
  const std::size_t words = head + (bytes + 3) / 4, blocks = plain ? 1 : S;
  if (payload_.extent(0) < blocks * words) payload_ = View1<float>("tapestry::xsite_payload", blocks * words);
  const ExecSpace ex;
  float* mine = payload_.data() + (plain ? 0 : me * words);
  if (contribute_ && plain) Kokkos::deep_copy(ex, View1<float>(mine, n), View1<float>(const_cast<float*>(buf), n));
  else if (contribute_)
    kernels::compress_with_feedback(ex, compression_, View1<float>(const_cast<float*>(buf), n), residual,
                                    reinterpret_cast<std::uint8_t*>(mine + head));
  if (weighted_) {
    float h[3] = {header->weight, header->value, header->total};
    Kokkos::deep_copy(ex, View1<float>(mine, 3), Kokkos::View<float*, HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(h, 3));
  }
  ex.fence();
  n_ = n, words_ = words, background_ = background && (S > 1 || elastic_);
  if (!elastic_) {
    contrib_.resize(S);
    for (std::size_t s = 0; s < S; ++s) contrib_[s] = int(s);
    bytes_ += plain ? 2 * (S - 1) * n * sizeof(float) / S : (S - 1) * (bytes + head * sizeof(float));
  }
  if (S == 1 && !elastic_) return;
  if (!background_ && !elastic_) {
    if (plain) cross_.all_reduce_sum(mine, n);
    else cross_.all_gather_inplace(payload_.data(), words);
    return;
  }
  // A thread or a socket moves host bytes: a device payload is staged in host_ (back in finish()).
  float* wire = payload_.data();
  staged_ = !kHostPayload;
  if (staged_) {
    host_.resize(blocks * words);
    Kokkos::View<float*, HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> h(host_.data() + (plain ? 0 : me * words), words);
    Kokkos::deep_copy(h, View1<float>(mine, words));
    wire = host_.data();
  }
  if (!background_) {  // elastic, blocking
    exchange_elastic(wire, words, thread_comm_.get());
    return;
  }
  error_ = nullptr;
  const MPI_Comm comm = thread_comm_.get();
  worker_ = std::thread([this, wire, words, plain, comm] {
    try {
      if (elastic_) exchange_elastic(wire, words, comm);
      else if (plain) parallel::all_reduce_sum(wire, words, MPI_FLOAT, sizeof(float), comm);
      else parallel::all_gather_inplace(wire, words, MPI_FLOAT, sizeof(float), comm);
    } catch (...) {
      error_ = std::current_exception();
    }
  });
}

void CrossSiteSum::finish(float* out, std::vector<Header>* headers) {
  require(n_ > 0, "CrossSiteSum: no exchange in flight");
  const Timed timed{seconds_, MPI_Wtime()};
  const std::size_t n = n_, words = words_, S = sites();
  const bool plain = plain_;
  n_ = 0;
  if (background_) {
    worker_.join();
    if (error_) std::rethrow_exception(error_);
  }
  bytes_ += std::exchange(thread_bytes_, 0);
  if (std::exchange(staged_, false)) {
    Kokkos::View<float*, HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> h(host_.data(), host_.size());
    Kokkos::deep_copy(View1<float>(payload_.data(), host_.size()), h);
  }
  const ExecSpace ex;
  View1<float> acc(out, n);
  if (plain) {
    Kokkos::deep_copy(ex, acc, View1<float>(payload_.data(), n));
    ex.fence();
    return;
  }
  const std::size_t head = weighted_ ? 3 : 0;
  std::vector<float> scale(S, 1.0f);
  if (weighted_) {  // every contributing site's header (zeros for the others); the weights normalised
    std::vector<Header> h(S, Header{0, 0, 0});
    double total = 0;
    for (const int c : contrib_) {
      const std::size_t s = std::size_t(c);
      float got[3];
      Kokkos::deep_copy(Kokkos::View<float*, HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(got, 3),
                        View1<float>(payload_.data() + s * words, 3));
      h[s] = {got[0], got[1], got[2]};
      total += double(got[0]);
    }
    for (const int c : contrib_)
      scale[std::size_t(c)] = total > 0 ? float(double(h[std::size_t(c)].weight) / total) : 1.0f / float(contrib_.size());
    if (headers) *headers = h;
  }
  Kokkos::deep_copy(ex, acc, 0.0f);
  for (const int c : contrib_) {  // site order: the same sum on every rank
    const std::size_t s = std::size_t(c);
    kernels::decompress_add(ex, compression_, reinterpret_cast<const std::uint8_t*>(payload_.data() + s * words + head),
                            acc, scale[s]);
  }
  ex.fence();
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
