#pragma once
/// \file
/// \brief Checkpoints as one parallel-HDF5 file: every tensor at its full logical shape under a
/// readable path, written collectively, each rank writing only its own slice; attributes describe
/// the model, the run and the layout. Format: docs/checkpoint-format.md.

#include <mpi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "tapestry/core/config.hpp"
#include "tapestry/core/flat_run.hpp"

namespace tapestry::io {

/// Version 2 (model spec): tensors named by what they are (/model/layers/03/attn/k/weight) and
/// the spec stored as /model attributes. Version 1 (GPT-2 only, /model/blocks/03/attn/qkv/weight)
/// is still read.
constexpr int kCheckpointFormatVersion = 2;
constexpr const char* kCheckpointFormatName = "tapestry-checkpoint";

/// \brief One tensor of the flat parameter buffer, as it appears in the file.
struct FlatTensor {
  std::string path;                  ///< under /model (parameters) and /optimizer/adam_{m,v}
  std::vector<std::int64_t> shape;   ///< 1-D or 2-D
  std::size_t offset = 0, size = 0;  ///< in the flat buffer
  std::string llmc_name;             ///< e.g. "qkvw[3]" (layer 3 of llm.c's qkvw)
};

/// \brief Everything but the tensors.
struct CheckpointState {
  int format_version = kCheckpointFormatVersion;  ///< of the file read (written: always the current)
  ModelConfig model;
  OptimConfig optim;
  int tp = 1, pp = 1, dp = 1, zero = 0;  ///< layout at save
  std::int64_t step = 0;                 ///< optimizer steps taken
  std::int64_t total_steps = 0;          ///< of the run's LR schedule
  std::int64_t tokens_seen = 0;
  std::int64_t adam_t = 0;               ///< AdamW's bias-correction step
  double wall_time_s = 0;                ///< training time so far
  std::string program_version;
  // data loader
  std::string train_data;
  std::int64_t loader_file = 0, loader_offset = 0, loader_epoch = 0;
  int batch_size = 0, seq_len = 0, global_batch = 0;
  std::uint64_t seed = 0;  ///< initialisation seed (no randomness is drawn after initialisation)
  // DiLoCo (written as /diloco when diloco_sites > 0)
  int diloco_sites = 0;          ///< sites, each with its own inner state
  int diloco_sites_in_file = 0;  ///< whose inner state the file holds: all sites, or 1 (a federated site's own file)
  int outer_steps = 0;           ///< H: inner steps per outer step
  double outer_lr = 0, outer_momentum = 0;
  bool outer_nesterov = true;
  int outer_fragments = 1, outer_delay = 0;  ///< Streaming DiLoCo's schedule (1 and 0 in older files)
  double outer_mix = 0.5;
  std::int64_t outer_pending_step = -1;  ///< the step after which the fragment in flight was sent; -1: none
  bool outer_residual = false;           ///< error-feedback residuals saved (site_SS/outer_residual)
  std::string outer_site_steps;          ///< --outer-quota: steps each site computed, "s0,s1,..." ("" without)
  /// Elastic federation: the sites each outer exchange summed, as changes "step:s,s;step:s" ("" without)
  std::string outer_contributors;
};

/// Path prefixes of the DiLoCo state: site s's inner parameters and moments (site 0's are the
/// ordinary /model and /optimizer/adam_{m,v}), and the outer parameters and momentum.
std::string diloco_site_prefix(int site, const char* what);  ///< what: model, adam_m, adam_v
constexpr const char* kOuterParams = "/diloco/outer/model";
constexpr const char* kOuterMomentum = "/diloco/outer/momentum";
/// The summed pseudo-gradient of the fragment in flight (Streaming DiLoCo; only that fragment's
/// elements are used).
constexpr const char* kOuterPending = "/diloco/outer/pending";
/// Site s's error-feedback residual of the cross-site encoding (site s of the file: 0 in a federated site's own).
std::string diloco_residual_prefix(int site);

/// \brief One flat buffer of this rank written under `prefix` (/model, /optimizer/adam_m, a
/// DiLoCo site's state, ...): the whole-model elements `runs` name, taken from data[run.local].
/// Over the ranks writing a file, every whole element of [0, n) must be named exactly once per
/// section; a rank with nothing to write passes no runs.
struct FlatSection {
  std::string prefix;
  const float* data = nullptr;
  std::vector<FlatRun> runs;
};

/// Writes `path` collectively over `comm` (every rank calls it, with its sections in the same
/// order: /model, /optimizer/adam_m, /optimizer/adam_v, then any others). Each rank moves its runs
/// straight between its buffers and their hyperslabs of the whole-tensor datasets (in pieces of at
/// most kMaxTransferElements), so nothing of the size of the whole model is allocated anywhere.
/// The file is complete only once this returns on every rank.
void write_checkpoint(const std::string& path, MPI_Comm comm, const CheckpointState& state,
                      const std::vector<FlatTensor>& tensors, const std::vector<FlatSection>& sections);

/// The largest piece of a tensor one HDF5 call moves (and the staging buffer of verify_sections).
constexpr std::size_t kMaxTransferElements = std::size_t(1) << 24;

/// Reads back this rank's runs of every section from a written file and compares them bit for bit
/// with the buffers they were written from (HDF5 checks each chunk's Fletcher32 as it reads).
/// Local: each rank checks its own hyperslabs. Returns "" or what failed.
std::string verify_sections(const std::string& path, const std::vector<FlatTensor>& tensors,
                            const std::vector<FlatSection>& sections);

/// Reads the attributes. Throws tapestry::Error naming the file for a missing file, a file that is
/// not a Tapestry checkpoint, an unknown format version or an incomplete write.
CheckpointState read_checkpoint_state(const std::string& path);

/// Reads flat parameters [0, n) into `params` and the AdamW moments of [m_begin, m_end) into
/// `m` and `v` (each m_end - m_begin long); any rank, any layout. Throws tapestry::Error on a
/// corrupted tensor (HDF5's Fletcher32 check) or a tensor of the wrong shape.
void read_checkpoint_tensors(const std::string& path, const std::vector<FlatTensor>& tensors,
                             float* params, std::size_t n, float* m, float* v, std::size_t m_begin,
                             std::size_t m_end);

/// Reads flat range [begin, end) of the buffer stored under `prefix` (e.g. "/model") into `dst`
/// (element 0 = flat index begin). Errors as read_checkpoint_tensors.
void read_flat_section(const std::string& path, const std::string& prefix, const std::vector<FlatTensor>& tensors,
                       float* dst, std::size_t begin, std::size_t end);

/// Reads the whole-model elements `runs` name of the buffer under `prefix` into dst[run.local]:
/// a rank's TP/PP/ZeRO part, read straight from its hyperslabs. Errors as read_checkpoint_tensors.
void read_runs(const std::string& path, const std::string& prefix, const std::vector<FlatTensor>& tensors,
               float* dst, const std::vector<FlatRun>& runs);

/// \brief One tensor as `ckpt info` / `ckpt verify` report it.
struct TensorReport {
  std::string path;
  std::vector<std::int64_t> shape;
  double l2_norm = 0;
  std::uint64_t checksum = 0, stored_checksum = 0;
  bool ok = false;
};

/// Reads every tensor under /model and /optimizer/adam_{m,v} (and /diloco, if present), recomputes norms and checksums. A
/// dataset that is missing or fails Fletcher32 is reported with ok = false.
std::vector<TensorReport> inspect_checkpoint(const std::string& path, const std::vector<FlatTensor>& tensors);

/// Order-independent checksum of float data: sum of the IEEE-754 bit patterns as uint32, mod 2^64.
std::uint64_t checksum(const float* x, std::size_t n);

}  // namespace tapestry::io
