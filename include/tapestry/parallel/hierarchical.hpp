#pragma once
/// \file
/// \brief Sites and the hierarchical gradient reducer for DP groups that span sites joined by slow
/// wide-area links.

#include <exception>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "tapestry/core/views.hpp"
#include "tapestry/kernels/compress.hpp"
#include "tapestry/parallel/grad_reducer.hpp"
#include "tapestry/parallel/site_mesh.hpp"

namespace tapestry::parallel {

/// \brief Which site each rank of a DP group belongs to, and the communicators of the hierarchy:
/// node (ranks sharing memory, inside the site), site (same node-local index across the site's
/// nodes) and cross-site (same position inside their sites).
class SiteTopology {
 public:
  /// Elastic federation (site_mesh.hpp): this job is site `site` of `num_sites`, and its DP group
  /// holds only this site's ranks; nothing crosses sites over MPI (cross_site() is this rank alone).
  static SiteTopology alone(const Comm& dp, int site, int num_sites);

  /// `site` is this rank's site id (0 <= site < num_sites); ranks of one site need not be
  /// contiguous. Collective over `dp`. Throws tapestry::Error when sites differ in size or shape.
  SiteTopology(const Comm& dp, int site, int num_sites);

  /// Site of a rank under `--sites N`: contiguous blocks of size world / N (must divide), unless the
  /// environment variable TAPESTRY_SITE gives it explicitly.
  static int site_of(int rank, int world, int num_sites);

  int site() const { return site_; }
  int num_sites() const { return num_sites_; }
  const Comm& site_ranks() const { return site_comm_; }  ///< every rank of this site
  const Comm& node() const { return node_; }
  const Comm& site_nodes() const { return site_nodes_; }
  const Comm& cross_site() const { return cross_; }
  std::string describe() const;
  bool elastic() const { return elastic_; }

 private:
  SiteTopology() = default;
  int site_ = 0, num_sites_ = 1;
  bool elastic_ = false;
  Comm site_comm_, node_, site_nodes_, cross_;
};

/// \brief Sums a buffer over a cross-site communicator (one rank per site), as is or compressed
/// (kernels::Compression) with error feedback: each rank encodes its buffer plus the error left from
/// its previous call, the encodings are all-gathered, and every rank decodes and sums them in site
/// order (the same sum everywhere). Counts the bytes this rank sends.
///
/// An exchange can also run in the background (Streaming DiLoCo): start() encodes on the calling
/// thread, then a thread of this object moves the bytes with MPI on its own duplicate of the
/// communicator (host memory; no Kokkos call off the main thread); finish() waits and decodes.
class CrossSiteSum {
 public:
  /// `cross` runs on `cross_comm`, which is duplicated here (collective over it).
  CrossSiteSum(Collectives& cross, const Comm& cross_comm, kernels::Compression compression);
  ~CrossSiteSum();
  CrossSiteSum(const CrossSiteSum&) = delete;
  CrossSiteSum& operator=(const CrossSiteSum&) = delete;

  /// buf (n) = its sum over sites, in place. `residual` (n): the error fed back from call to call;
  /// empty: this object's own (reset when n changes).
  void sum(float* buf, std::size_t n, View1<float> residual = {});
  /// Starts the sum over sites of buf (n): encodes it now (error feedback through `residual`, n),
  /// then exchanges it on a thread (`background`, needs MPI_THREAD_MULTIPLE) or at once through
  /// `cross`. One exchange at a time; finish() ends it.
  /// With `header` (a weighted exchange): every site's encoding travels with {weight, value, total}, and
  /// finish() forms sum_s weight_s / (sum of weights) * x_s instead of the plain sum (an all-gather
  /// also without compression).
  struct Header {
    float weight = 1, value = 0, total = 0;
  };
  /// `contribute` false: this site sends nothing this time (elastic: just rejoined) but still
  /// receives the others' sum.
  void start(const float* buf, std::size_t n, View1<float> residual, bool background, const Header* header = nullptr,
             bool contribute = true);
  /// Elastic federation: exchanges go through `mesh` (held by the site's first rank; null on the
  /// others) instead of the cross-site communicator. The site's encodings are gathered on its first
  /// rank over `site` (duplicated here; collective over it), sent to the other sites' first ranks,
  /// and every rank gets its part of each contributing site's block back. `site_id` is this site,
  /// `sites` the run's.
  void set_elastic(const Comm& site, SiteMesh* mesh, int site_id, int sites);
  /// The sites the last finished exchange summed: every site, or (elastic) those that contributed
  /// and every surviving site got.
  const std::vector<int>& contributors() const { return contrib_; }
  /// Waits for the exchange started last and writes the sum over sites into out (n); a weighted
  /// one also returns every site's header, in site order. Raises the background thread's error.
  void finish(float* out, std::vector<Header>* headers = nullptr);
  bool in_flight() const { return n_ > 0; }
  std::uint64_t bytes_sent() const { return bytes_; }
  /// Seconds the calling thread spent in start() and finish() so far (encoding, exchanging, waiting).
  double seconds() const { return seconds_; }
  kernels::Compression compression() const { return compression_; }

 private:
  Collectives& cross_;
  Comm thread_comm_;  ///< duplicate of the cross-site communicator, used only by the thread
  kernels::Compression compression_;
  View1<float> residual_, payload_;
  std::vector<float> host_;  ///< the thread's bytes when payload_ is not in host memory
  std::thread worker_;
  std::exception_ptr error_;
  std::size_t n_ = 0, words_ = 0;  ///< the exchange in flight: values, and 4-byte words per site
  bool background_ = false, weighted_ = false, staged_ = false;  // staged_: the payload went through host_
  bool plain_ = false;  // the exchange in flight is an in-place all-reduce (no compression, no headers)
  std::uint64_t bytes_ = 0, thread_bytes_ = 0;
  double seconds_ = 0;
  // Elastic federation
  SiteMesh* mesh_ = nullptr;
  bool elastic_ = false, contribute_ = true;
  int site_id_ = 0, sites_ = 1;
  std::vector<int> contrib_;
  /// Blocks of an exchange: the sites of the run (elastic) or of the cross-site communicator.
  std::size_t sites() const { return std::size_t(elastic_ ? sites_ : cross_.size()); }
  /// The elastic exchange of the payload blocks (this site's at site_id_): on the calling thread.
  void exchange_elastic(float* wire, std::size_t words, MPI_Comm site);
};

/// \brief Reduce-scatter inside the node, reduce-scatter across the site's nodes, all-reduce of
/// each 1/(ranks per site) piece across sites among the ranks that hold it (so a site sends over
/// all its ranks' links in parallel, see CrossSiteSum), then all-gather back. Buffers of any size
/// (padded internally).
class HierarchicalReducer final : public GradReducer {
 public:
  HierarchicalReducer(const SiteTopology& topo, Backend backend, Collectives& dp_flat,
                      kernels::Compression compression = kernels::Compression::none);
  std::uint64_t cross_site_bytes() const override { return xsum_.bytes_sent(); }
  double cross_site_seconds() const override { return xsum_.seconds(); }
  std::string describe() const override;
  void all_reduce_sum(float* grads, std::size_t n) override;
  /// ZeRO-1 shards the state over the ranks of a site (every site holds a full copy, so no
  /// parameter all-gather crosses sites): the full sum is formed hierarchically, then this rank
  /// keeps shard (its rank in the site) of n / (ranks per site).
  void reduce_scatter_sum(const float* grads, float* shard, std::size_t n) override;
  /// All-gather of the shards inside the site.
  void all_gather(float* params, std::size_t n) override;

 private:
  const SiteTopology& topo_;
  std::unique_ptr<Collectives> node_, site_, cross_, site_all_;
  Collectives& flat_;
  CrossSiteSum xsum_;
  View1<float> scratch_, piece_;
  /// Copies grads (n) into the padded scratch and sums it over the DP group there; returns it.
  const float* sum_into_scratch(const float* grads, std::size_t n);
};

}  // namespace tapestry::parallel
