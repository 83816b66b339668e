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

namespace tapestry::parallel {

/// \brief Which site each rank of a DP group belongs to, and the communicators of the hierarchy:
/// node (ranks sharing memory, inside the site), site (same node-local index across the site's
/// nodes) and cross-site (same position inside their sites).
class SiteTopology {
 public:
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

 private:
  int site_, num_sites_;
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
  void start(const float* buf, std::size_t n, View1<float> residual, bool background, const Header* header = nullptr);
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
  bool background_ = false, weighted_ = false;
  std::uint64_t bytes_ = 0;
  double seconds_ = 0;
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
