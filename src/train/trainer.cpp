#include "tapestry/train/trainer.hpp"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <array>
#include <chrono>
#include <csignal>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iomanip>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <memory>
#include <sstream>
#include <thread>
#include <utility>

#include "tapestry/core/error.hpp"
#include "tapestry/io/data_loader.hpp"
#include "tapestry/parallel/large_count.hpp"
#include "tapestry/parallel/site_mesh.hpp"
#include "tapestry/io/llmc_checkpoint.hpp"
#include "tapestry/kernels/blas.hpp"
#include "tapestry/kernels/optim.hpp"
#include "tapestry/model/gpt.hpp"
#include "tapestry/train/hf.hpp"
#include "tapestry/optim/adamw.hpp"
#include "tapestry/parallel/collectives.hpp"
#include "tapestry/parallel/grad_reducer.hpp"
#include "tapestry/parallel/hierarchical.hpp"
#include "tapestry/train/checkpointing.hpp"
#include "tapestry/train/diloco.hpp"
#include "text.hpp"
#include "tp_group.hpp"
#include "pipeline.hpp"
#include "mfu.hpp"
#include "tapestry/parallel/pipeline_schedule.hpp"

namespace tapestry::train {

namespace {
using detail::Clock;
using detail::fmt;
using detail::since;
using detail::CollectivesTp;

/// Sum of a host scalar over a communicator.
double all_sum(double v, const parallel::Comm& comm) {
  double out = v;
  if (comm.size() > 1) MPI_Allreduce(&v, &out, 1, MPI_DOUBLE, MPI_SUM, comm.get());
  return out;
}

/// Mean loss over the first `global_batches` global batches of the validation data: the same rows
/// for every layout (each rank reads its micro-batches of each global batch).
double evaluate(model::GPT& gpt, detail::Pipeline* pipe, const kernels::Blas& blas, io::DataLoader& loader,
                int global_batches, int grad_accum, const parallel::Comm& dp) {
  loader.reset();
  blas.weights(gpt.params().data(), gpt.padded_size());  // bf16: the weights rounded once for all batches
  std::vector<int> in, tg;
  double sum = 0;
  const int calls = global_batches * grad_accum;
  for (int i = 0; i < calls; ++i) {
    loader.next_batch(in, tg);
    sum += pipe != nullptr ? pipe->forward_only(blas, in, tg) : gpt.forward(blas, in, tg);
  }
  // A bad token id met on some rank stops every rank here, named by the ranks that met it.
  if (all_sum(loader.error().empty() ? 0.0 : 1.0, dp) > 0) {
    if (!loader.error().empty()) throw Error(loader.error());
    throw parallel::PeerError();
  }
  return all_sum(sum / calls, dp) / dp.size();
}

/// \brief Stop and failure flags agreed over the job. Blocking by default; with a lag L > 0, the
/// vote started after step s is read after step s + L (the same step on every rank), so sites that
/// only talk at outer steps (DiLoCo) do not wait on a cross-site round trip every step: L steps
/// give the all-reduce L steps' time to cross the WAN.
class StepVote {
 public:
  StepVote(MPI_Comm comm, int lag)
      : comm_(comm), lag_(lag), req_(std::size_t(std::max(lag, 1)), MPI_REQUEST_NULL), send_(req_.size()),
        recv_(req_.size()) {}
  ~StepVote() {
    for (auto& r : req_)
      if (r != MPI_REQUEST_NULL) MPI_Wait(&r, MPI_STATUS_IGNORE);
  }
  StepVote(const StepVote&) = delete;
  StepVote& operator=(const StepVote&) = delete;
  /// {stop, failed} as the maximum over ranks (failed: 0 fine, 1 loss not finite, 2 a data error)
  /// of the vote started L steps ago; `last`: also settle every vote in flight and this one now.
  std::array<int, 2> vote(bool stop, int failed, bool last) {
    std::array<int, 2> got{0, 0};
    auto settle = [&](std::size_t i) {
      if (req_[i] == MPI_REQUEST_NULL) return;
      MPI_Wait(&req_[i], MPI_STATUS_IGNORE);
      got = {std::max(got[0], recv_[i][0]), std::max(got[1], recv_[i][1])};
    };
    const std::size_t slot = std::size_t(count_ % std::uint64_t(req_.size()));  // its vote started L steps ago
    settle(slot);
    const std::array<int, 2> mine{stop ? 1 : 0, failed};
    if (lag_ > 0 && !last) {
      send_[slot] = mine;
      MPI_Iallreduce(send_[slot].data(), recv_[slot].data(), 2, MPI_INT, MPI_MAX, comm_, &req_[slot]);
      ++count_;
      return got;
    }
    for (std::size_t i = 0; i < req_.size(); ++i) settle(i);
    std::array<int, 2> now{};
    MPI_Allreduce(mine.data(), now.data(), 2, MPI_INT, MPI_MAX, comm_);
    return {std::max(got[0], now[0]), std::max(got[1], now[1])};
  }

 private:
  MPI_Comm comm_;
  int lag_;
  std::vector<MPI_Request> req_;
  std::vector<std::array<int, 2>> send_, recv_;
  std::uint64_t count_ = 0;
};

/// Squared L2 norms of the gradients g (element 0 is flat index `begin`): {tensors split over
/// TP, replicated tensors}. The first sums over the TP group, the second is the same on every TP
/// rank, so the global norm counts every parameter once.
std::array<double, 2> split_sumsq(const ExecSpace& ex, View1<float> g, std::size_t begin,
                                  const std::vector<model::ParamTensor>& tensors,
                                  const std::vector<std::pair<std::size_t, std::size_t>>& skip) {
  std::array<double, 2> s{0, 0};
  auto add = [&](int part, std::size_t lo, std::size_t hi) {
    if (lo < hi) s[std::size_t(part)] += kernels::sum_squares<float>(ex, View1<float>(g.data() + (lo - begin), hi - lo));
  };
  for (const auto& t : tensors) {
    std::size_t lo = std::max(t.offset, begin);
    const std::size_t hi = std::min(t.offset + t.size, begin + g.extent(0));
    const int part = t.split == model::Split::none ? 1 : 0;
    for (const auto& [a, b] : skip) {  // sorted ranges of duplicates: counted on another rank
      if (b <= lo || a >= hi) continue;
      add(part, lo, std::max(lo, a));
      lo = std::max(lo, b);
    }
    add(part, lo, hi);
  }
  return s;
}

/// {min, max} of `v` over a communicator (equal when every rank agrees).
std::array<int, 2> min_max(int v, const parallel::Comm& comm) {
  std::array<int, 2> r{v, -v};
  MPI_Allreduce(MPI_IN_PLACE, r.data(), 2, MPI_INT, MPI_MIN, comm.get());
  return {r[0], -r[1]};
}

/// Everything a run holds, built collectively (an error on any rank stops all ranks).
struct Run {
  TrainConfig cfg;
  std::unique_ptr<CollectivesTp> tp;  // before gpt, which uses it
  std::unique_ptr<io::DataLoader> train_loader, val_loader;
  std::unique_ptr<model::GPT> gpt;
  std::unique_ptr<detail::Pipeline> pipe;            // pp > 1
  std::unique_ptr<parallel::Collectives> embed_coll; // pp > 1: first + last stage (tied wte)
  parallel::Comm embed_comm;
  std::unique_ptr<optim::AdamW> adamw;
  std::unique_ptr<parallel::Collectives> coll;
  std::unique_ptr<parallel::SiteTopology> sites;
  parallel::Comm site_world;  ///< federated: this site's ranks of every TP and PP group (they write its file)
  /// Host buffers of checkpoint snapshots, reused from one save to the next (fresh ones would be
  /// page-faulted in at every save, which is most of a save's stall on some machines).
  std::vector<std::vector<float>> save_buffers;
  // DiLoCo: gradients are reduced inside the site only (inner_coll over the site's ranks).
  std::unique_ptr<parallel::Collectives> inner_coll;
  std::unique_ptr<parallel::SiteTopology> inner_topo;  // the site alone, for a hierarchical inner reducer
  std::unique_ptr<Diloco> diloco;
  std::unique_ptr<parallel::SiteMesh> mesh;  // elastic federation, on the site's first rank
  bool elastic = false;   // elastic federation: this job is one site; sites meet over TCP
  bool rejoined = false;  // this site rejoined a running elastic federation (at start_step)
  parallel::Comm overlap_comm;  ///< --overlap-grad-reduce: the DP group again, for the started sums alone
  std::unique_ptr<parallel::GradReducer> reducer;
  parallel::FlatReducer* overlapped = nullptr;  ///< the reducer, when it overlaps backward
  std::uint64_t xsite_seen = 0;  // cross-site bytes counted so far
  int site = 0;
  bool federated = false;  // this job is one site of a federated run: per-site checkpoints
  /// The ranks whose gradients are summed each step: the DP group, or with DiLoCo the site's ranks.
  const parallel::Comm* sum_comm = nullptr;
  /// The ranks the AdamW state is sharded over with ZeRO-1 (and that write a checkpoint's slices):
  /// the DP group, or with sites (hierarchical, DiLoCo) the site's ranks, so that every site holds a
  /// full copy and no parameter all-gather crosses sites.
  const parallel::Comm* shard_comm = nullptr;
  // Found and read in setup's local phase, used in its collective phase.
  std::string resume_path;          ///< the checkpoint to resume from, or ""
  io::CheckpointState resume_state;  ///< its state (attributes), read once
  std::unique_ptr<HfReader> hf_reader;  ///< --init-from a Hugging Face directory or file
  /// Checkpoints of a federated run: one file per site, in <ckpt-dir>/site_NN (written by the site).
  std::string ckpt_dir() const {
    if (!federated) return cfg.ckpt_dir;
    char buf[16];
    std::snprintf(buf, sizeof(buf), "/site_%02d", site);
    return cfg.ckpt_dir + buf;
  }
  std::uint64_t cross_site_bytes() const {
    return reducer->cross_site_bytes() + (diloco ? diloco->cross_site_bytes() : 0);
  }
  View1<float> grad_shard;  // ZeRO-1: this rank's summed gradients
  std::vector<io::FlatTensor> tensors;  // the checkpoint's view of the flat buffer
  int start_step = 0;
  int resumed_step = 0;  // the checkpoint's step (start_step, unless this site rejoined a federation later)
  double wall_before = 0;  // training seconds before this job (resumed runs)
  std::string resumed_from;
};

std::string model_str(const ModelConfig& m) { return spec_string(m); }

/// Loads parameters, AdamW moments and step, the loader position and DiLoCo's state from `path`
/// (any layout; a DiLoCo checkpoint needs the same number of sites, or a run without DiLoCo, which
/// continues from site 0's state).
void resume_from(Run& r, const std::string& path) {
  const auto& st = r.resume_state;
  const auto tensors = checkpoint_tensors(st.model, st.format_version);
  const auto& m = r.cfg.model;
  require(model_str(st.model) == model_str(m), "checkpoint '" + path + "' holds model " + model_str(st.model) +
                                                   " but the run asks for " + model_str(m));
  const int sites = r.diloco ? r.sites->num_sites() : 0;
  require(st.diloco_sites == 0 || sites == 0 || st.diloco_sites == sites,
          "checkpoint '" + path + "' holds the DiLoCo state of " + std::to_string(st.diloco_sites) +
              " sites but this run has " + std::to_string(sites));
  // Whose inner state this rank loads: its own site's when the file holds every site's.
  const int s = st.diloco_sites_in_file > 1 && sites > 0 ? r.site : 0;
  auto params = Kokkos::create_mirror_view(r.gpt->params());
  auto mm = Kokkos::create_mirror_view(r.adamw->m()), vv = Kokkos::create_mirror_view(r.adamw->v());
  const auto b = r.adamw->begin(), e = r.adamw->end();
  // Each rank reads the values it holds straight from their hyperslabs (its TP part, its stages'
  // layers, its ZeRO shard of the moments); nothing of the whole model's size is allocated.
  const auto runs = r.gpt->part_runs(false);
  io::read_runs(path, io::diloco_site_prefix(s, "model"), tensors, params.data(), clip_runs(runs, 0, params.extent(0)));
  io::read_runs(path, io::diloco_site_prefix(s, "adam_m"), tensors, mm.data(), clip_runs(runs, b, e, b));
  io::read_runs(path, io::diloco_site_prefix(s, "adam_v"), tensors, vv.data(), clip_runs(runs, b, e, b));
  Kokkos::deep_copy(r.gpt->params(), params);
  Kokkos::deep_copy(r.adamw->m(), mm);
  Kokkos::deep_copy(r.adamw->v(), vv);
  if (r.diloco && st.diloco_sites > 0) {
    auto outer = Kokkos::create_mirror_view(r.diloco->outer()), mom = Kokkos::create_mirror_view(r.diloco->momentum());
    const auto mine = clip_runs(runs, r.diloco->begin(), r.diloco->end(), r.diloco->begin());
    io::read_runs(path, io::kOuterParams, tensors, outer.data(), mine);
    io::read_runs(path, io::kOuterMomentum, tensors, mom.data(), mine);
    Kokkos::deep_copy(r.diloco->outer(), outer);
    Kokkos::deep_copy(r.diloco->momentum(), mom);
    auto load = [&](const std::string& prefix, View1<float> dst) {
      auto h = Kokkos::create_mirror_view(dst);
      io::read_runs(path, prefix, tensors, h.data(), mine);
      Kokkos::deep_copy(dst, h);
    };
    if (st.outer_residual && r.cfg.parallel.compress != "none") load(io::diloco_residual_prefix(s), r.diloco->residual());
    r.diloco->set_contributors_log(st.outer_contributors);
    if (st.outer_pending_step >= 0) {
      const auto& pc = r.cfg.parallel;
      require(st.outer_fragments == pc.outer_fragments && st.outer_delay == pc.outer_delay,
              "checkpoint '" + path + "' was saved with a fragment in flight under --outer-fragments " +
                  std::to_string(st.outer_fragments) + " --outer-delay " + std::to_string(st.outer_delay) +
                  "; resume it with the same two");
      load(io::kOuterPending, r.diloco->pending());
      r.diloco->restore_pending(int(st.outer_pending_step));
    }
  } else if (r.diloco) {
    r.diloco->reset(r.gpt->params());
  }
  r.adamw->set_steps_taken(st.adam_t);
  r.train_loader->set_position({st.loader_file, st.loader_offset, st.loader_epoch});
  r.start_step = r.resumed_step = int(st.step);
  r.wall_before = st.wall_time_s;
  r.resumed_from = path;
}

/// Setup, phase 1: local only (no communication) - the config, the data, the site, the files to
/// read. A failure on any one rank (a data file missing on one node, a bad TAPESTRY_SITE on one
/// rank) reaches the agree() that follows on every rank, before any collective, so none hangs.
void setup_local(Run& r, const TrainConfig& cfg_in, const parallel::ProcessGrid& grid, std::ostream& out) {
  TrainConfig& cfg = r.cfg;
  cfg = cfg_in;
  const auto& layout = grid.layout();
  require(cfg.export_llmc.empty() || cfg.model.is_gpt2(),
          "--export-llmc writes llm.c's GPT-2 format; this model spec is not GPT-2 (norm " + cfg.model.norm + ", mlp " +
              cfg.model.mlp + ", positions " + cfg.model.positions + ")");
  const bool hf = !cfg.init_from.empty() && is_hf_source(cfg.init_from);
  if (hf && std::filesystem::is_directory(cfg.init_from)) {  // the model is the directory's config.json
    ModelConfig m = model_from_hf_config((std::filesystem::path(cfg.init_from) / "config.json").string());
    if (cfg.model.padded_vocab_size >= m.vocab_size) m.padded_vocab_size = cfg.model.padded_vocab_size;
    if (spec_string(m) != spec_string(cfg.model))
      out << "note: model taken from " << cfg.init_from << "/config.json: " << spec_string(m) << "\n";
    m.doc_mask = cfg.model.doc_mask, m.eod_token = cfg.model.eod_token, m.eod_mask_loss = cfg.model.eod_mask_loss;
    cfg.model = m;
  } else if (!cfg.init_from.empty() && !hf) {
    require(cfg.model.is_gpt2(), "--init-from reads llm.c GPT-2 checkpoints; this model spec is not GPT-2 (norm " +
                                     cfg.model.norm + ", mlp " + cfg.model.mlp + ", positions " + cfg.model.positions + ")");
    ModelConfig m = io::read_llmc_header(cfg.init_from);
    if (cfg.model.vocab_size != m.vocab_size || cfg.model.n_layer != m.n_layer ||
        cfg.model.d_model != m.d_model || cfg.model.n_head != m.n_head)
      out << "note: model shape taken from " << cfg.init_from << "\n";
    m.doc_mask = cfg.model.doc_mask, m.eod_token = cfg.model.eod_token, m.eod_mask_loss = cfg.model.eod_mask_loss;
    cfg.model = m;
  }
  const int dp = layout.dp(), drank = grid.dp().rank();
  r.federated = !cfg.parallel.federation.empty();
  r.elastic = elastic_federation(cfg.parallel);
  resolve_batch(cfg, r.elastic ? dp * cfg.parallel.sites : dp);  // elastic: the global batch spans the sites' jobs
  validate(cfg);
  const int B = cfg.batch_size, T = cfg.seq_len;
  io::DataLoader::Options lopt;
  lopt.batch_size = B, lopt.seq_len = T, lopt.vocab_size = std::uint64_t(cfg.model.vocab_size);
  lopt.shard = drank, lopt.num_shards = dp, lopt.micro_batches = cfg.grad_accum;
  if (r.elastic)  // this job is one site of the DP ranks
    lopt.shard = cfg.parallel.site_id * dp + drank, lopt.num_shards = cfg.parallel.sites * dp;
  lopt.shuffle = cfg.shuffle, lopt.seed = cfg.seed;
  r.train_loader = std::make_unique<io::DataLoader>(io::parse_data_spec(cfg.train_data), lopt);
  if (cfg.val_every > 0) {
    lopt.shuffle = false;  // validation: the same rows every time
    lopt.shard = drank, lopt.num_shards = dp;  // elastic: every site evaluates the same rows
    r.val_loader = std::make_unique<io::DataLoader>(io::parse_data_spec(cfg.val_data), lopt);
  }
  parallel::parse_backend(cfg.parallel.collectives);
  if (layout.tp() > 1) model::validate_tp(cfg.model, layout.tp());
  if (layout.pp() > 1) stage_layers(cfg.model.n_layer, layout.pp(), cfg.parallel.pp_split);
  r.site = r.elastic ? cfg.parallel.site_id : parallel::SiteTopology::site_of(drank, dp, cfg.parallel.sites);
  if (hf) r.hf_reader = std::make_unique<HfReader>(cfg.init_from, cfg.model);  // files there, fitting the spec
  r.resume_path = resolve_resume(cfg.resume, r.ckpt_dir());
  if (!r.resume_path.empty()) r.resume_state = io::read_checkpoint_state(r.resume_path);
}

/// Runs `f` on the first rank of `comm` only. Its error (tapestry::Error) is rethrown there; the
/// other ranks get false (and return, so that every rank meets in the enclosing agree()).
/// Collective over `comm`.
bool on_first_rank(const parallel::Comm& comm, const std::function<void()>& f) {
  std::string error;
  if (comm.rank() == 0) try {
      f();
    } catch (const Error& e) {
      error = e.what();
    }
  int bad = error.empty() ? 0 : 1;
  MPI_Bcast(&bad, 1, MPI_INT, 0, comm.get());
  if (bad && comm.rank() == 0) throw Error(error);
  return bad == 0;
}

/// Elastic federation: the site's first rank connects to the other sites. Either every site starts
/// now, or this site rejoins a running federation: then it takes the state a member sent (the outer
/// parameters become its parameters) and continues from that member's step. Collective over the job.
void join_sites(Run& r, const parallel::ProcessGrid& grid) {
  parallel::SiteMesh::Start st;
  if (!on_first_rank(grid.world(), [&] { st = r.mesh->start(r.start_step); })) return;
  std::int64_t head[3] = {st.rejoined ? 1 : 0, st.step, std::int64_t(st.state.size())};
  MPI_Bcast(head, 3, MPI_INT64_T, 0, grid.world().get());
  if (head[0] == 0) return;
  st.state.resize(std::size_t(head[2]));
  parallel::broadcast(st.state.data(), st.state.size(), MPI_BYTE, 1, 0, grid.world().get());
  r.diloco->rejoin(int(head[1]), st.state, r.gpt->params());
  r.start_step = int(head[1]);
  r.rejoined = true;
}

/// Setup, phase 2: the communicators, the model, the optimizer and the resumed state. Every rank
/// gets here only when phase 1 succeeded on all of them.
void setup_collective(Run& r, const parallel::ProcessGrid& grid, std::ostream& out) {
  TrainConfig& cfg = r.cfg;
  const auto& layout = grid.layout();
  const int dp = layout.dp(), drank = grid.dp().rank();
  const int B = cfg.batch_size, T = cfg.seq_len;
  const auto backend = parallel::parse_backend(cfg.parallel.collectives);
  r.tp = std::make_unique<CollectivesTp>(parallel::make_collectives(backend, grid.tp()), grid.tp(), backend);
  // TP and PP groups exchange activations every step: never across sites
  for (const auto* g : {&grid.tp(), &grid.pp()}) {
    const auto [lo, hi] = min_max(r.site, *g);
    require(lo == hi, std::string(g == &grid.tp() ? "a tensor" : "a pipeline") + "-parallel group spans sites " +
                          std::to_string(lo) + " and " + std::to_string(hi) +
                          ": TP and PP groups must stay inside a site (check TAPESTRY_SITE, --tp and --pp)");
  }
  if (layout.tp() > 1) {
    const auto tp_node = grid.tp().split_shared();
    if (tp_node.size() < grid.tp().size())
      out << "warning: the tensor-parallel group of " << grid.tp().size() << " ranks spans nodes (" << tp_node.size()
          << " on this one): TP across nodes is slow; use --tp <= ranks per node\n";
  }
  model::Stage stage;
  const int pp = layout.pp(), ps = grid.pp().rank();
  if (pp > 1) {
    const auto per = stage_layers(cfg.model.n_layer, pp, cfg.parallel.pp_split);
    for (int s = 0; s < ps; ++s) stage.first_layer += per[std::size_t(s)];
    stage.num_layers = per[std::size_t(ps)];
    stage.embed = ps == 0;
    stage.head = ps == pp - 1;
    if (cfg.grad_accum < pp)
      out << "warning: " << cfg.grad_accum << " micro-batches for " << pp << " pipeline stages: the pipeline bubble is "
          << fmt("%.0f", 100 * parallel::bubble_fraction(pp, cfg.grad_accum))
          << "% of the step; use --micro-batches >= " << pp << " (better 4x)\n";
  }
  model::GptOptions opt;
  opt.tp = r.tp.get(), opt.sequence_parallel = cfg.parallel.sequence_parallel, opt.stage = stage;
  if (cfg.attention != "auto") opt.tiled_attention = cfg.attention == "tiled";
  opt.bf16_activations = parse_bf16_activations(cfg.activations);
  opt.bf16_attention = opt.bf16_linear_inputs = parse_precision(cfg.precision) == Precision::bf16;
  r.gpt = std::make_unique<model::GPT>(cfg.model, B, T, std::size_t(dp), opt);
  if (pp > 1) {
    r.pipe = std::make_unique<detail::Pipeline>(*r.gpt, grid.pp(), cfg.grad_accum);
    // The output layer is tied to the token embedding: the first and last stage each hold wte and
    // sum their gradients, as Megatron does.
    const bool ends = ps == 0 || ps == pp - 1;
    r.embed_comm = grid.pp().split(ends ? 0 : 1, ps);
    r.embed_coll = parallel::make_collectives(backend, r.embed_comm);
  }
  // Every rank initialises identically (same seed or same file), so no broadcast is needed.
  if (cfg.init_from.empty()) {
    r.gpt->init_random(cfg.seed);
  } else if (r.hf_reader) {  // each rank reads only the values it holds
    r.gpt->load_params_from([&](std::size_t w, std::size_t n, float* dst) { r.hf_reader->read(w, n, dst); });
    r.hf_reader.reset();
  } else {
    r.gpt->load_params(io::read_llmc_params(cfg.init_from, std::size_t(cfg.model.num_parameters())));
  }
  const std::size_t n = r.gpt->padded_size();
  r.coll = parallel::make_collectives(backend, grid.dp());
  const auto& pc = cfg.parallel;
  if (r.elastic)
    r.sites = std::make_unique<parallel::SiteTopology>(parallel::SiteTopology::alone(grid.dp(), r.site, pc.sites));
  else if (pc.sites > 1 || pc.grad_reduce == "hierarchical" || pc.outer_steps > 0)
    r.sites = std::make_unique<parallel::SiteTopology>(grid.dp(), r.site, pc.sites);
  if (r.elastic && !on_first_rank(grid.world(), [&] {  // listening from now on
        parallel::SiteMesh::Spec ms;
        ms.name = pc.federation, ms.site = r.site, ms.sites = pc.sites, ms.timeout_s = pc.federation_timeout;
        ms.peers = parallel::parse_site_peers(pc.federation_peers, pc.sites);
        ms.fingerprint = federation_fingerprint(cfg) + " ranks_per_site=" + std::to_string(grid.world().size());
        r.mesh = std::make_unique<parallel::SiteMesh>(ms);
      }))
    return;
  if (r.federated) r.site_world = grid.world().split(r.site, grid.world().rank());
  r.sum_comm = r.shard_comm = &grid.dp();
  if (pc.outer_steps > 0) {
    r.sum_comm = r.shard_comm = &r.sites->site_ranks();
    r.inner_coll = parallel::make_collectives(backend, *r.sum_comm);
    if (pc.grad_reduce == "hierarchical") {
      r.inner_topo = std::make_unique<parallel::SiteTopology>(*r.sum_comm, 0, 1);
      r.reducer = std::make_unique<parallel::HierarchicalReducer>(*r.inner_topo, backend, *r.inner_coll);
    } else {
      r.reducer = std::make_unique<parallel::FlatReducer>(*r.inner_coll, std::size_t(pc.bucket_mb * (1 << 20)));
    }
    r.diloco = std::make_unique<Diloco>(*r.sites, backend, pc, r.gpt->params(), r.mesh.get());
  } else if (pc.grad_reduce == "hierarchical") {
    r.shard_comm = &r.sites->site_ranks();
    r.reducer = std::make_unique<parallel::HierarchicalReducer>(*r.sites, backend, *r.coll,
                                                                kernels::parse_compression(pc.compress));
  } else {
    auto flat = std::make_unique<parallel::FlatReducer>(*r.coll, std::size_t(pc.bucket_mb * (1 << 20)));
    if (r.sites) {  // for the estimate of the bytes a flat ring sends across sites
      std::vector<int> site_of(static_cast<std::size_t>(dp));
      MPI_Allgather(&r.site, 1, MPI_INT, site_of.data(), 1, MPI_INT, grid.dp().get());
      flat->set_next_rank_across_sites(site_of[std::size_t((drank + 1) % dp)] != r.site);
    }
    if (pc.overlap_grad_reduce && dp > 1) {
      r.overlap_comm = grid.dp().split(0, drank);
      const model::GPT& g = *r.gpt;
      flat->overlap(parallel::make_collectives(backend, r.overlap_comm), n, g.grad_pieces(flat->max_piece()),
                    [&g](std::size_t lo, std::size_t hi) { return g.grad_ready_after(lo, hi); },
                    [&g](std::size_t lo, std::size_t hi) { return g.param_needed_at(lo, hi); });
      r.overlapped = flat.get();
      if (pc.zero == 1)  // the next forward waits, layer by layer, for the parameters it reads
        r.gpt->set_layer_begin([p = r.overlapped](int l) { p->params_needed(l); });
    }
    r.reducer = std::move(flat);
  }
  require(!r.federated || r.shard_comm != &grid.dp() || pc.zero == 0,
          "a federated run with --zero 1 needs --grad-reduce hierarchical or --outer-steps (then ZeRO-1 shards "
          "inside each site and every site writes its own checkpoint)");
  // AdamW state: whole, or with ZeRO-1 one shard per rank of the shard group.
  const int rsize = r.shard_comm->size(), rrank = r.shard_comm->rank();
  if (pc.zero == 1) {
    const std::size_t shard = n / std::size_t(rsize);
    r.adamw = std::make_unique<optim::AdamW>(cfg.optim, r.gpt->tensors(), shard * std::size_t(rrank),
                                             shard * std::size_t(rrank + 1));
    r.grad_shard = View1<float>("tapestry::grad_shard", shard);
  } else {
    r.adamw = std::make_unique<optim::AdamW>(cfg.optim, r.gpt->tensors(), 0, n);
  }
  r.tensors = checkpoint_tensors(cfg.model);
  if (!r.resume_path.empty()) resume_from(r, r.resume_path);
  // Every site must continue from the same step (federated sites resume from their own files).
  const auto [lo, hi] = min_max(r.start_step, grid.world());
  require(lo == hi, "ranks would resume from different steps (" + std::to_string(lo) + " and " + std::to_string(hi) +
                        "): every site's --ckpt-dir must hold a checkpoint of the same step");
  if (r.elastic) join_sites(r, grid);
}

/// \brief One step's checkpoint, snapshotted: the values this rank writes, copied into host
/// buffers the job owns, and where they go; written at once or on a background thread.
struct SaveJob {
  io::CheckpointState st;
  std::vector<std::vector<float>> buffers;
  std::vector<io::FlatSection> sections;
  const std::vector<io::FlatTensor>* tensors = nullptr;
  parallel::Comm comm;  ///< the writers: a duplicate of their communicator, owned by this job
  std::string dir;
  int keep = 0;
  SaveTimes times;  ///< where the write's time went, once written
  std::string path() const { return (std::filesystem::path(dir) / checkpoint_name(st.step)).string(); }
  std::string write() { return CheckpointManager(dir, keep, comm.get()).save(st, *tensors, sections, &times); }
};

/// Snapshots the run's state at `step`: each rank copies only the range of its part that it writes
/// (1/dp of it, or its ZeRO-1 shard, and nothing of a replica another site writes). Collective over
/// the writers (the communicator is duplicated here).
std::unique_ptr<SaveJob> snapshot(Run& r, const parallel::ProcessGrid& grid, int step, double wall,
                                  const io::DataLoader::Position* position = nullptr) {
  if (r.overlapped) r.overlapped->params_all();  // a ZeRO-1 all-gather still in flight
  const auto& cfg = r.cfg;
  auto job = std::make_unique<SaveJob>();
  io::CheckpointState& st = job->st;
  st.model = cfg.model;
  st.optim = cfg.optim;
  st.tp = grid.layout().tp(), st.pp = grid.layout().pp(), st.dp = grid.layout().dp(), st.zero = cfg.parallel.zero;
  st.step = step;
  st.total_steps = cfg.steps;
  st.tokens_seen = std::int64_t(step) * cfg.global_batch * cfg.seq_len;
  st.adam_t = r.adamw->steps_taken();
  st.wall_time_s = wall;
  st.program_version = TAPESTRY_VERSION;
  st.train_data = cfg.train_data;
  const auto pos = position != nullptr ? *position : r.train_loader->position();
  st.loader_file = pos.file, st.loader_offset = pos.offset, st.loader_epoch = pos.epoch;
  st.batch_size = cfg.batch_size, st.seq_len = cfg.seq_len, st.global_batch = cfg.global_batch;
  st.seed = cfg.seed;
  const std::size_t n = r.gpt->padded_size();
  // Every rank writes a range [lo, hi) of its part (params() layout), restricted to the elements it
  // speaks for in its TP group and pipeline: straight to their hyperslabs of the whole tensors.
  const auto owned = r.gpt->part_runs(true);
  using Range = std::pair<std::size_t, std::size_t>;
  // `view`'s element 0 is local index `base`; the job keeps a host copy of [lo, hi) only.
  job->buffers = std::move(r.save_buffers);  // the previous save's, if any: already in memory
  std::size_t used = 0;
  auto section = [&](const std::string& prefix, View1<float> view, std::size_t base, Range range) {
    const auto [lo, hi] = range;
    if (used == job->buffers.size()) job->buffers.emplace_back();
    auto& host = job->buffers[used++];
    host.resize(hi - lo);  // moving the outer vector keeps each buffer's data where it is
    if (hi > lo) {
      Kokkos::View<float*, Layout, HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> h(host.data(), host.size());
      Kokkos::deep_copy(h, Kokkos::subview(view, std::make_pair(lo - base, hi - base)));
    }
    job->sections.push_back({prefix, host.data(), clip_runs(owned, lo, hi, lo)});
  };
  Range range{0, 0};
  bool main_writer = r.federated || r.site == 0;
  if (r.shard_comm == &grid.dp() && !r.federated) {  // each DP rank writes 1/dp: replicated values are written once
    const std::size_t part = n / std::size_t(grid.dp().size()), b = part * std::size_t(grid.dp().rank());
    range = {b, b + part};
    main_writer = true;
  } else {
    // Sharded inside sites: rank j of a site writes slice j. One file for the job: site 0's ranks
    // write the state (with DiLoCo, every site its own inner state, site s > 0 under /diloco/site_SS).
    // Federated: every site writes its own file.
    const parallel::Comm& g = r.federated ? r.sites->site_ranks() : *r.shard_comm;
    const std::size_t part = n / std::size_t(g.size()), b = part * std::size_t(g.rank());
    range = {b, b + part};
  }
  const Range none{0, 0}, main = main_writer ? range : none;
  section("/model", r.gpt->params(), 0, main);
  section("/optimizer/adam_m", r.adamw->m(), r.adamw->begin(), main);
  section("/optimizer/adam_v", r.adamw->v(), r.adamw->begin(), main);
  if (r.diloco) {
    const int S = r.sites->num_sites();
    for (int s = 1; s < S && !r.federated; ++s) {
      const Range mine = r.site == s ? range : none;
      section(io::diloco_site_prefix(s, "model"), r.gpt->params(), 0, mine);
      section(io::diloco_site_prefix(s, "adam_m"), r.adamw->m(), r.adamw->begin(), mine);
      section(io::diloco_site_prefix(s, "adam_v"), r.adamw->v(), r.adamw->begin(), mine);
    }
    section(io::kOuterParams, r.diloco->outer(), r.diloco->begin(), main);
    section(io::kOuterMomentum, r.diloco->momentum(), r.diloco->begin(), main);
    r.diloco->settle();  // a fragment in flight: its sum is saved, the resumed run merges it on time
    st.outer_pending_step = r.diloco->pending_step();
    if (st.outer_pending_step >= 0) section(io::kOuterPending, r.diloco->pending(), r.diloco->begin(), main);
    st.outer_residual = cfg.parallel.compress != "none";
    for (int s = 0; st.outer_residual && s < (r.federated ? 1 : S); ++s)
      section(io::diloco_residual_prefix(s), r.diloco->residual(), r.diloco->begin(),
              r.federated || r.site == s ? range : none);
    st.outer_fragments = cfg.parallel.outer_fragments, st.outer_delay = cfg.parallel.outer_delay;
    st.outer_mix = cfg.parallel.outer_mix;
    st.outer_contributors = r.diloco->contributors_log();
    for (const auto k : r.diloco->site_steps())
      st.outer_site_steps += (st.outer_site_steps.empty() ? "" : ",") + std::to_string(k);
    st.diloco_sites = S;
    st.diloco_sites_in_file = r.federated ? 1 : S;
    st.outer_steps = cfg.parallel.outer_steps;
    st.outer_lr = cfg.parallel.outer_lr, st.outer_momentum = cfg.parallel.outer_momentum;
    st.outer_nesterov = cfg.parallel.outer_nesterov;
  }
  const parallel::Comm& writers = r.federated ? r.site_world : grid.world();
  MPI_Comm dup = MPI_COMM_NULL;
  MPI_Comm_dup(writers.get(), &dup);
  job->comm = parallel::Comm::adopt(dup);
  job->tensors = &r.tensors;
  job->dir = r.ckpt_dir();
  job->keep = cfg.keep;
  return job;
}

/// Saves the run's state at `step` now (collective over the writers).
std::string save(Run& r, const parallel::ProcessGrid& grid, int step, double wall) {
  auto job = snapshot(r, grid, step, wall);
  const std::string path = job->write();
  r.save_buffers = std::move(job->buffers);
  return path;
}

/// \brief At most one save in flight on a thread of its own. Its errors reach the main thread only
/// at wait(), which every rank calls at the same step, so no rank leaves the training loop alone.
/// An MPI or HDF5 failure inside it stops the job at once (MPI_Abort), like one on the main thread.
class BackgroundSave {
 public:
  ~BackgroundSave() {
    if (thread_.joinable()) thread_.join();
  }
  void start(std::unique_ptr<SaveJob> job) {
    job_ = std::move(job);
    done_ = false, error_ = nullptr;
    thread_ = std::thread([this] {
      // Lowest CPU priority: where the training threads use every core, the write takes what they
      // leave instead of slowing the steps (Linux: a thread's own nice value).
      setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), 19);
      const auto t0 = Clock::now();
      try {
        job_->write();
      } catch (const LibraryError& e) {
        std::fprintf(stderr, "tapestry: error: rank %d: writing checkpoint %s in the background: %s\n", world_rank(),
                     job_->path().c_str(), e.what());
        std::fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, 1);
      } catch (...) {
        error_ = std::current_exception();
      }
      seconds_ = since(t0);
      times_ = job_->times;
      done_ = true;
    });
  }
  bool busy() const { return job_ != nullptr; }
  /// How long the last save took to write, verify and publish (valid once finished()).
  double seconds() const { return seconds_; }
  /// Where that time went (valid once finished()).
  const SaveTimes& times() const { return times_; }
  /// True once the save in flight has finished (a local look: no communication).
  bool finished() const { return job_ && done_; }
  /// Waits for the save in flight; rethrows its error. Returns its host buffers, for the next save.
  std::vector<std::vector<float>> wait() {
    if (!job_) return {};
    thread_.join();
    auto buffers = std::move(job_->buffers);
    job_.reset();
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
    return buffers;
  }

 private:
  static int world_rank() {
    int r = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
  }
  std::unique_ptr<SaveJob> job_;
  std::thread thread_;
  std::atomic<bool> done_{false};
  std::exception_ptr error_;
  double seconds_ = 0;
  SaveTimes times_;
};

/// \brief A federated run's guard against a site that dies: the cross-site calls of a step would
/// wait for it forever. The main thread reports progress after every step and marks the last step
/// whose state its buffers hold; when no step completes within the federation timeout, this site
/// saves that state to its own checkpoint (site-local calls on its own communicator, from this
/// thread), prints one line and stops its job.
class SiteWatchdog {
 public:
  SiteWatchdog(Run& r, const parallel::ProcessGrid& grid, BackgroundSave& saver, double timeout_s, bool print)
      : r_(r), grid_(grid), saver_(saver), timeout_(timeout_s), print_(print) {
    // A write to the socket of a site that died must fail (and the step stall, which this
    // watchdog reports) rather than kill this site with SIGPIPE and no word.
    std::signal(SIGPIPE, SIG_IGN);
    safe_pos_ = r.train_loader->position();
    safe_step_ = r.start_step;
    last_ = Clock::now();
    thread_ = std::thread([this] { watch(); });
  }
  ~SiteWatchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  SiteWatchdog(const SiteWatchdog&) = delete;
  SiteWatchdog& operator=(const SiteWatchdog&) = delete;
  /// The parameters and optimizer state now are those after `step`, read up to `pos`.
  void state_is(int step, const io::DataLoader::Position& pos) {
    std::lock_guard<std::mutex> lock(mu_);
    safe_step_ = step, safe_pos_ = pos, updating_ = false, last_ = Clock::now();
  }
  /// The optimizer is changing the state (never interrupted by a save).
  void updating() {
    std::lock_guard<std::mutex> lock(mu_);
    updating_ = true;
  }
  /// Progress without a new state (a save, a validation pass).
  void beat() {
    std::lock_guard<std::mutex> lock(mu_);
    last_ = Clock::now();
  }

 private:
  void watch() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      cv_.wait_for(lock, std::chrono::milliseconds(500));
      if (stop_ || updating_ || std::chrono::duration<double>(Clock::now() - last_).count() < timeout_) continue;
      const int step = safe_step_;
      const auto pos = safe_pos_;
      lock.unlock();
      std::string saved = "no checkpoint written";
      try {
        if (saver_.busy()) r_.save_buffers = saver_.wait();  // HDF5 runs on one thread at a time
        auto job = snapshot(r_, grid_, step, r_.wall_before, &pos);
        saved = "saved this site's state at step " + std::to_string(step) + " to " + job->write();
      } catch (const std::exception& e) {
        saved = std::string("saving this site's state failed: ") + e.what();
      }
      if (print_)
        std::fprintf(stderr,
                     "tapestry: error: federation '%s': no step completed across sites for %.0f s (another site's job "
                     "died or stalls); %s; stopping this site\n",
                     r_.cfg.parallel.federation.c_str(), timeout_, saved.c_str());
      std::fflush(stderr);
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
  }
  Run& r_;
  const parallel::ProcessGrid& grid_;
  BackgroundSave& saver_;
  double timeout_;
  bool print_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false, updating_ = false;
  int safe_step_ = 0;
  io::DataLoader::Position safe_pos_;
  Clock::time_point last_;
  std::thread thread_;
};

}  // namespace

TrainResult run_training(const TrainConfig& cfg_in, const parallel::ProcessGrid& grid, std::ostream& out_root) {
  const bool root = grid.world().rank() == 0;
  std::ofstream null_sink;  // never opened: writes are dropped
  std::ostream& out = root ? out_root : null_sink;

  Run r;
  parallel::agree(grid.world(), [&] { setup_local(r, cfg_in, grid, out); });
  parallel::agree(grid.world(), [&] { setup_collective(r, grid, out); });
  const TrainConfig& cfg = r.cfg;
  model::GPT& gpt = *r.gpt;
  const parallel::Comm& dpc = grid.dp();
  const int dp = dpc.size(), tp = grid.layout().tp(), B = cfg.batch_size, T = cfg.seq_len;
  const bool zero = cfg.parallel.zero == 1;
  kernels::Blas blas(ExecSpace(), parse_precision(cfg.precision));
  const auto& ex = blas.exec();

  // Elastic federation: this job is one site, which processes its share of the global batch.
  const double tokens_per_step = double(cfg.global_batch) * T / (r.elastic ? cfg.parallel.sites : 1);
  const double flops_per_step = cfg.model.flops_per_token(T) * tokens_per_step;
  const double peak = detail::run_peak_flops(grid.world(), cfg.peak_flops);
  out << "tapestry train: " << cfg.model.num_parameters() << " parameters (" << spec_string(cfg.model)
      << "), " << grid.layout().describe() << ", global batch " << cfg.global_batch << " x T=" << T
      << " (B=" << B << " per rank, grad_accum=" << cfg.grad_accum << ")" << (zero ? ", ZeRO-1" : "")
      << (blas.precision() == Precision::bf16 ? ", bf16 matmuls (fp32 accumulation, weights and optimizer; " + blas.bf16_engine() + ")" : "")
      << ", " << r.train_loader->num_tokens() << " training tokens, " << cfg.steps << " steps\n";
  out << "data: " << r.train_loader->describe() << "\n";
  if (cfg.model.doc_mask || cfg.model.eod_mask_loss)
    out << "documents end at token " << cfg.model.eod_token << ":"
        << (cfg.model.doc_mask ? " attention stays inside each document" : "")
        << (cfg.model.doc_mask && cfg.model.positions == "rope" ? ", RoPE positions restart" : "")
        << (cfg.model.eod_mask_loss ? (cfg.model.doc_mask ? ";" : "") + std::string(" the token after one is not predicted") : "")
        << "\n";
  if (r.pipe) {
    const auto per = stage_layers(cfg.model.n_layer, grid.layout().pp(), cfg.parallel.pp_split);
    out << "pipeline: " << per.size() << " stages (layers";
    for (int l : per) out << " " << l;
    out << "), " << cfg.grad_accum << " micro-batches, 1F1B; bubble (pp-1)/(M+pp-1) = "
        << fmt("%.1f", 100 * parallel::bubble_fraction(grid.layout().pp(), cfg.grad_accum)) << "%\n";
  }
  if (r.sites && !r.diloco && cfg.parallel.grad_reduce != "hierarchical") out << "sites: " << r.sites->describe() << "\n";
  if (dp > 1)
    out << "gradients: " << r.reducer->describe() << (r.diloco ? " (inside each site)" : "")
        << (r.overlapped ? ", overlapped with backward: " + std::to_string(r.overlapped->pieces()) + " pieces started as their layers finish, on " + r.overlapped->started_on() : std::string())
        << "\n";
  if (r.diloco) out << r.diloco->describe() << "\n";
  // Saving, resuming and stopping also show in every federated site's own job log (its scripts act on them).
  const bool site_first = r.federated && r.sites->site_ranks().rank() == 0;
  std::ostream& site_out = root || site_first ? out_root : null_sink;
  if (!r.resumed_from.empty())
    site_out << "resumed from " << r.resumed_from << " at step " << r.resumed_step
             << (r.rejoined ? ", then rejoined the federation at step " + std::to_string(r.start_step) : std::string()) << "\n";
  install_stop_signals();
  const auto run_start = Clock::now();

  std::ofstream metrics;
  if (root && !cfg.metrics_file.empty()) {
    metrics.open(cfg.metrics_file, std::ios::trunc);
    require(bool(metrics), "cannot write metrics file '" + cfg.metrics_file + "'");
  }

  TrainResult result;
  // DiLoCo: read each vote min(8, H / P) steps later (at least 1).
  const int vote_lag = r.diloco ? std::max(1, std::min(8, cfg.parallel.outer_steps / cfg.parallel.outer_fragments)) : 0;
  StepVote vote(grid.world().get(), vote_lag);
  int thread_level = MPI_THREAD_SINGLE;
  MPI_Query_thread(&thread_level);
  const bool async = cfg.async_save && thread_level == MPI_THREAD_MULTIPLE;
  if (cfg.async_save && !async && cfg.save_every > 0)
    out << "note: checkpoints are written synchronously (the MPI library does not provide MPI_THREAD_MULTIPLE)\n";
  BackgroundSave saver;
  std::string saver_path;
  if (async && cfg.save_every > 0 && r.start_step < cfg.steps) {
    // The snapshot buffers, allocated and touched now rather than at the first save (as Megatron's
    // asynchronous save keeps its host buffers).
    const auto t0 = Clock::now();
    r.save_buffers = std::move(snapshot(r, grid, r.start_step, 0)->buffers);
    std::size_t bytes = 0;
    for (const auto& b : r.save_buffers) bytes += b.size() * sizeof(float);
    site_out << "checkpoints: written in the background from " << fmt("%.2f", double(bytes) / (1 << 30))
             << " GiB of host buffers on this rank (allocated in " << fmt("%.2f", since(t0)) << " s)" << std::endl;
  }
  std::unique_ptr<SiteWatchdog> watchdog;  // federated: a site that dies must not leave this one waiting
  if (r.federated && !r.elastic)
    watchdog = std::make_unique<SiteWatchdog>(r, grid, saver, cfg.parallel.federation_timeout,
                                              r.sites->site_ranks().rank() == 0 && grid.tp().rank() == 0 &&
                                                  grid.pp().rank() == 0);
  std::vector<int> in, tg;
  double xsite_wait_s = 0, wall_s = 0;  // this rank's cross-site waits and step times, for the summary
  double last_loss = 0;                 // shown for a step a straggling site skips
  // Left by the last AdamW step (its fused pass): the gradients zeroed, the parameters declared to
  // the Blas with the bf16 copy of this rank's part written.
  bool grads_zero = false, weights_declared = false;
  View1<float> params = gpt.params(), grads = gpt.grads();
  const std::size_t n = gpt.padded_size();
  // Elastic federation: the decisions (drops, admissions, contributors), in this site's log.
  auto report_events = [&] {
    if (!r.diloco) return;
    std::istringstream lines(r.diloco->take_events());
    for (std::string line; std::getline(lines, line);)
      site_out << "federation '" << cfg.parallel.federation << "' (site " << r.site << "): " << line << std::endl;
  };
  if (r.rejoined) {  // the rest of the boundary the members are at: this site's (empty) part of its exchange
    if (r.diloco->acts_after(r.start_step)) r.diloco->after_step(r.start_step, params);
    report_events();
  }
  for (int step = r.start_step; step <= cfg.steps; ++step) {
    if (r.val_loader && (step % cfg.val_every == 0 || step == cfg.steps)) {
      const ValRecord v{step, evaluate(gpt, r.pipe.get(), blas, *r.val_loader, cfg.val_batches, cfg.grad_accum, dpc)};
      out << "step " << std::setw(5) << step << "/" << cfg.steps << " | val loss " << fmt("%.4f", v.loss) << "\n";
      if (metrics) metrics << "{\"step\":" << v.step << ",\"val_loss\":" << v.loss << "}\n";
      result.val.push_back(v);
    }
    if (step == cfg.steps) {
      if (cfg.steps == 0 && cfg.save_every > 0) {  // --steps 0: the initial model as a checkpoint (e.g. HF -> HDF5)
        const std::string path = save(r, grid, 0, r.wall_before + since(run_start));
        site_out << "saved checkpoint " << path << std::endl;
      }
      break;
    }
    StepRecord rec;
    const auto t0 = Clock::now();
    const double gather_wait_before = r.overlapped ? r.overlapped->gather_wait_seconds() : 0;
    const double read_before = r.train_loader->read_seconds();
    double loss = last_loss;
    // --outer-quota: a straggling site skips the steps it has no time for (their batches are
    // consumed, so every site stays at the same data position).
    const bool computed = !r.diloco || r.diloco->compute_next();
    if (!computed) {
      for (int micro = 0; micro < cfg.grad_accum; ++micro) r.train_loader->next_batch(in, tg);
      rec.lr = optim::lr_at(cfg.optim, step, cfg.steps);
    } else {
      if (!grads_zero) gpt.zero_grad();
      // bf16: each weight matrix rounded once per step, at its first product (or by AdamW)
      if (!weights_declared) blas.weights(params.data(), n);
      grads_zero = weights_declared = false;
      loss = 0;
      // --overlap-grad-reduce: before the step's last backward, the sums start as layers finish
      std::function<void()> start_overlap;
      if (r.overlapped)
        start_overlap = [&] {
          r.overlapped->begin(grads.data(), zero ? r.grad_shard.data() : nullptr);
          gpt.set_layer_done([&r](int l) { r.overlapped->layer_done(l); });
        };
      if (r.pipe) {  // 1F1B over the stages
        std::vector<std::vector<int>> ins(std::size_t(cfg.grad_accum)), tgs(ins.size());
        for (std::size_t m = 0; m < ins.size(); ++m) r.train_loader->next_batch(ins[m], tgs[m]);
        loss = r.pipe->train_step(blas, ins, tgs, start_overlap);
        if (const auto* wte = gpt.tied_embedding()) {  // the tied embedding: sum the two stages' gradients
          ex.fence();
          r.embed_coll->all_reduce_sum(grads.data() + wte->offset, wte->size);
        }
      } else {
        for (int micro = 0; micro < cfg.grad_accum; ++micro) {
          r.train_loader->next_batch(in, tg);
          loss += gpt.forward(blas, in, tg, 1.0 / cfg.grad_accum) / cfg.grad_accum;
          if (micro + 1 == cfg.grad_accum && start_overlap) start_overlap();
          gpt.backward(blas, 1.0 / cfg.grad_accum);
        }
      }
      gpt.set_layer_done(nullptr);
      ex.fence();
      if (r.site == cfg.parallel.emulate_slow_site)  // benchmarks: a slower machine
        std::this_thread::sleep_for(std::chrono::duration<double>((cfg.parallel.emulate_slow_factor - 1) * since(t0)));
      rec.data_ms = 1e3 * (r.train_loader->read_seconds() - read_before);
      const auto tc = Clock::now();
      // Gradients are summed over the reducing group (DP, or the site with DiLoCo); dividing by its
      // size is folded into the norm and AdamW's scale.
      const parallel::Comm& red = *r.sum_comm;
      const int nred = red.size();
      double sumsq = 0;
      const double xsite_before = r.reducer->cross_site_seconds();
      if (r.overlapped) r.overlapped->finish();  // the pieces not started yet, then the wait
      else if (zero) r.reducer->reduce_scatter_sum(grads.data(), r.grad_shard.data(), n);
      else r.reducer->all_reduce_sum(grads.data(), n);
      if (r.sites && !r.diloco)  // the flat ring spans sites: all of it waits on the WAN
        rec.xsite_wait_ms = 1e3 * (cfg.parallel.grad_reduce == "hierarchical" ? r.reducer->cross_site_seconds() - xsite_before
                                                                              : since(tc));
      const View1<float> mine = zero ? r.grad_shard : grads;
      if (tp == 1 && !r.pipe) {
        sumsq = kernels::sum_squares<float>(ex, mine);
      } else {  // split tensors: summed over the TP group; replicated ones: counted once; then over stages
        // duplicates (a tied embedding's copy on the last stage, replicated kv heads): counted once
        const auto parts = split_sumsq(ex, mine, zero ? r.adamw->begin() : 0, gpt.tensors(), gpt.duplicate_ranges());
        sumsq = all_sum(parts[0], grid.tp()) + parts[1];
        sumsq = all_sum(sumsq, grid.pp());
      }
      if (zero) sumsq = all_sum(sumsq, *r.shard_comm);
      rec.comm_ms = 1e3 * since(tc);
      if (r.overlapped)  // and the forward's waits for ZeRO-1's parameters
        rec.comm_ms += 1e3 * (r.overlapped->gather_wait_seconds() - gather_wait_before);
      // The mean over the reducing group: every DP rank, or with DiLoCo this site's ranks (sites do
      // not talk between outer steps; the log shows site 0's loss).
      loss = all_sum(loss, red) / nred;
      rec.grad_norm = std::sqrt(sumsq) / nred;
      rec.lr = optim::lr_at(cfg.optim, step, cfg.steps);
      const double scale = kernels::clip_factor(rec.grad_norm, cfg.optim.grad_clip) / nred;
      if (watchdog) watchdog->updating();
      // One pass: the update, the gradients zeroed (without ZeRO-1, where they are the whole
      // buffer) and the bf16 weight copy (not with DiLoCo, whose exchanges change parameters).
      optim::FusedStep fused;
      fused.zero_grads = !zero;
      fused.blas = r.diloco ? nullptr : &blas;
      r.adamw->step(ex, params, zero ? r.grad_shard : grads, rec.lr, scale, fused);
      grads_zero = fused.zero_grads, weights_declared = fused.blas != nullptr;
      if (zero && r.overlapped) {  // the next forward waits for each layer's parameters
        r.overlapped->start_gather(params.data());
      } else if (zero) {
        const auto tg0 = Clock::now();
        r.reducer->all_gather(params.data(), n);
        rec.comm_ms += 1e3 * since(tg0);
      }
      last_loss = loss;
    }
    rec.computed = computed;
    if (watchdog) {  // an outer step that never completes leaves the inner state of this step
      ex.fence();
      watchdog->state_is(step + 1, r.train_loader->position());
    }
    if (r.diloco) r.diloco->step_done(computed, since(t0));
    if (r.diloco && r.diloco->acts_after(step + 1)) {
      const double wait = r.diloco->after_step(step + 1, params);
      rec.comm_ms += 1e3 * wait;
      rec.xsite_wait_ms = 1e3 * wait;
      report_events();
    }
    ex.fence();
    if (r.sites && (!r.diloco || r.diloco->acts_after(step + 1))) {  // bytes that crossed sites, all ranks together
      const std::uint64_t now = r.cross_site_bytes();
      const double sent = double(now - r.xsite_seen);
      r.xsite_seen = now;
      // DiLoCo: summed inside the site only (no cross-site round trip outside an exchange); every
      // site sends the same bytes (same shapes, same encoding).
      // Elastic federation: what this site sent, measured (sites may come and go).
      rec.cross_site_mb = r.diloco ? all_sum(sent, r.sites->site_ranks()) * (r.elastic ? 1 : r.sites->num_sites()) / 1e6
                                   : all_sum(sent, dpc) / 1e6;
    }
    // Stop and failure flags, agreed over the job (with DiLoCo read vote_lag steps later). It spans
    // the sites, so a site that runs ahead waits here for a slower one: a cross-site wait.
    const std::string& data_error = r.train_loader->error();
    const auto tv = Clock::now();
    const auto [stop, failed] =
        vote.vote(stop_requested(), !data_error.empty() ? 2 : std::isfinite(loss) ? 0 : 1, step + 1 == cfg.steps);
    if (r.sites) rec.xsite_wait_ms += 1e3 * since(tv);
    const double dt = since(t0);
    rec.utilization = (dt - rec.xsite_wait_ms / 1e3) / dt;
    if (r.diloco && r.diloco->acts_after(step + 1) && !r.diloco->merge_report().empty())
      out << r.diloco->merge_report() << "\n";  // --outer-quota's decisions (rank 0 prints)
    xsite_wait_s += rec.xsite_wait_ms / 1e3, wall_s += dt;
    if (r.pipe) {
      rec.pp_idle.resize(std::size_t(grid.pp().size()));
      const double mine_idle = r.pipe->idle_seconds() / dt;
      MPI_Allgather(&mine_idle, 1, MPI_DOUBLE, rec.pp_idle.data(), 1, MPI_DOUBLE, grid.pp().get());
    }
    rec.step = step + 1;
    rec.loss = loss;
    rec.ms = dt * 1e3;
    rec.tokens_per_s = tokens_per_step / dt;
    rec.mfu = flops_per_step / dt / peak;
    if (rec.step % cfg.log_every == 0 || rec.step == cfg.steps) {
      out << "step " << std::setw(5) << rec.step << "/" << cfg.steps << " | loss " << fmt("%.4f", rec.loss)
          << " | lr " << fmt("%.2e", rec.lr) << " | norm " << fmt("%.3f", rec.grad_norm) << " | "
          << fmt("%.1f", rec.ms) << " ms | " << fmt("%.0f", rec.tokens_per_s) << " tok/s | MFU "
          << fmt("%.1f", 100 * rec.mfu) << "%";
      if (dp > 1) out << " | comm " << fmt("%.1f", rec.comm_ms) << " ms";
      if (!rec.computed) out << " | skipped (pace)";
      if (r.sites)
        out << " | xsite " << fmt("%.2f", rec.cross_site_mb) << " MB, wait " << fmt("%.1f", rec.xsite_wait_ms)
            << " ms, util " << fmt("%.1f", 100 * rec.utilization) << "%";
      if (r.pipe) {
        out << " | idle";
        for (double f : rec.pp_idle) out << " " << fmt("%.0f", 100 * f) << "%";
      }
      out << "\n";
      out.flush();
    }
    if (metrics) {
      metrics << "{\"step\":" << rec.step << ",\"loss\":" << rec.loss << ",\"lr\":" << rec.lr
              << ",\"grad_norm\":" << rec.grad_norm << ",\"ms\":" << rec.ms << ",\"comm_ms\":" << rec.comm_ms
              << ",\"cross_site_mb\":" << rec.cross_site_mb << ",\"data_ms\":" << rec.data_ms;
      if (r.sites) metrics << ",\"xsite_wait_ms\":" << rec.xsite_wait_ms << ",\"utilization\":" << rec.utilization;
      if (!rec.computed) metrics << ",\"computed\":0";
      if (r.pipe) {
        metrics << ",\"pp_idle\":[";
        for (std::size_t i = 0; i < rec.pp_idle.size(); ++i) metrics << (i ? "," : "") << rec.pp_idle[i];
        metrics << "]";
      }
      metrics
              << ",\"tokens_per_s\":" << rec.tokens_per_s << ",\"mfu\":" << rec.mfu << "}\n";
      metrics.flush();
    }
    result.steps.push_back(rec);
    // Save on schedule, at the end, or when any rank got a stop signal (then exit cleanly).
    if (failed) {
      if (!data_error.empty()) throw Error(data_error);  // the ranks that read it name it
      if (failed == 2 || !root) throw parallel::PeerError();
      throw Error("loss is not finite by step " + std::to_string(rec.step) + " (lower --lr or enable --grad-clip)");
    }
    auto report_saved = [&] {
      site_out << "saved checkpoint " << saver_path << " (" << fmt("%.2f", saver.seconds()) << " s in the background: "
               << saver.times().str() << ")" << std::endl;
      saver_path.clear();
    };
    if (!saver_path.empty() && saver.finished()) report_saved();  // its errors wait for the next agreed point
    if (watchdog) watchdog->beat();
    const bool scheduled = cfg.save_every > 0 && (rec.step % cfg.save_every == 0 || rec.step == cfg.steps);
    if (scheduled || stop) {
      // Every rank reaches this point at the same step: the save in flight (if any) is waited for
      // and its errors raised here. The last save and a save on a stop signal are synchronous.
      const auto ts = Clock::now();
      if (saver.busy()) r.save_buffers = saver.wait();
      if (!saver_path.empty()) report_saved();
      const bool background = async && !stop && rec.step != cfg.steps;
      const auto tsnap = Clock::now();
      auto job = snapshot(r, grid, rec.step, r.wall_before + since(run_start));
      const double snap_s = since(tsnap);
      const std::string path = job->path();
      if (background) {
        saver.start(std::move(job));
        saver_path = path;
        const double stall = since(ts);
        result.save_stall_s += stall;
        site_out << "saving checkpoint " << path << " in the background (training stalled " << fmt("%.3f", stall)
                 << " s)" << std::endl;
      } else {
        job->write();
        r.save_buffers = std::move(job->buffers);
        result.save_stall_s += since(ts);
        site_out << "saved checkpoint " << path << " (" << fmt("%.2f", since(ts)) << " s: snapshot " << fmt("%.2f", snap_s) << " s, "
                 << job->times.str() << ")" << std::endl;
      }
    }
    if (stop) {
      site_out << "stop signal received: saved at step " << rec.step << ", exiting" << std::endl;
      result.stopped = true;
      break;
    }
  }
  if (r.sites && wall_s > 0) {  // utilization per site: the mean over its ranks of (wall - cross-site wait) / wall
    const int S = r.sites->num_sites();
    std::vector<double> mine(std::size_t(2 * S), 0.0), all(mine.size());
    mine[std::size_t(2 * r.site)] = (wall_s - xsite_wait_s) / wall_s, mine[std::size_t(2 * r.site + 1)] = 1;
    MPI_Allreduce(mine.data(), all.data(), 2 * S, MPI_DOUBLE, MPI_SUM, dpc.get());
    out << "cross-site: utilization (wall - waits on cross-site traffic) / wall by site:";
    for (int s = 0; s < S; ++s) {
      if (all[std::size_t(2 * s + 1)] == 0) continue;  // elastic federation: the other sites are other jobs
      result.site_utilization.push_back(all[std::size_t(2 * s)] / all[std::size_t(2 * s + 1)]);
      out << " " << s << ": " << fmt("%.1f", 100 * result.site_utilization.back()) << "%";
    }
    out << "\n";
  }
  for (const auto& rec : result.steps) result.steps_computed += rec.computed ? 1 : 0;
  if (r.diloco && cfg.parallel.outer_quota) {
    result.site_steps_computed = r.diloco->site_steps();
    out << "cross-site: steps computed by site (--outer-quota) of the " << r.diloco->site_steps_at() - r.start_step
        << " up to step " << r.diloco->site_steps_at() << ":";
    for (std::size_t s = 0; s < result.site_steps_computed.size(); ++s) out << " " << s << ": " << result.site_steps_computed[s];
    out << "\n";
  }
  if (saver.busy()) {  // not reached today (the last save is synchronous); kept so no save is left behind
    saver.wait();
    if (!saver_path.empty()) site_out << "saved checkpoint " << saver_path << " (in the background)" << std::endl;
  }
  if (r.overlapped) r.overlapped->params_all();
  double checksum = 0;
  if (tp > 1 || r.pipe) {  // of the whole model, the same on every rank: each element from the rank that owns it
    const auto h = Kokkos::create_mirror_view_and_copy(HostSpace(), params);
    for (const auto& run : gpt.part_runs(true))
      for (std::size_t i = 0; i < run.n; ++i) checksum += double(h(run.local + i));
    for (const auto* g : {&grid.tp(), &grid.pp()}) MPI_Allreduce(MPI_IN_PLACE, &checksum, 1, MPI_DOUBLE, MPI_SUM, g->get());
  } else {
    const auto p = params;
    Kokkos::parallel_reduce(
        "tapestry::param_checksum", Kokkos::RangePolicy<ExecSpace>(ex, 0, n),
        KOKKOS_LAMBDA(std::size_t i, double& acc) { acc += double(p(i)); }, checksum);
  }
  result.param_checksum = checksum;
  result.param_bytes = gpt.num_params() * sizeof(float);
  result.optimizer_bytes = r.adamw->state_bytes();
  if (!cfg.export_llmc.empty()) {
    // Written in parallel: the first DP rank of every TP rank and stage writes the values it owns.
    const auto h = Kokkos::create_mirror_view_and_copy(HostSpace(), params);
    const auto runs = grid.dp().rank() == 0 ? gpt.part_runs(true) : std::vector<FlatRun>{};
    parallel::agree(grid.world(), [&] { io::write_llmc_checkpoint(cfg.export_llmc, grid.world().get(), cfg.model, h.data(), runs); });
    out << "wrote llm.c checkpoint " << cfg.export_llmc << "\n";
  }
  return result;
}

}  // namespace tapestry::train
