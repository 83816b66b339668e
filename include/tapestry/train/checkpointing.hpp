#pragma once
/// \file
/// \brief Checkpoint policy for training runs: names, crash-safe saving (temporary name, verify,
/// rename, `latest` pointer, keep the last K), resume resolution, stop signals, and the
/// `tapestry ckpt info|verify|export` tools.

#include <mpi.h>

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "tapestry/core/config.hpp"
#include "tapestry/io/checkpoint.hpp"

namespace tapestry::train {

/// The file's tensors for a model spec, in flat-buffer order: the per-layer stacks split into one
/// dataset per layer and named part (format 2: qkvw -> layers/03/attn/q/weight, .../k/weight,
/// .../v/weight; format 1, GPT-2 only: blocks/03/attn/qkv/weight).
std::vector<io::FlatTensor> checkpoint_tensors(const ModelConfig& m, int format_version = io::kCheckpointFormatVersion);

/// The file name of step `step`'s checkpoint: step_00000123.h5.
std::string checkpoint_name(std::int64_t step);

/// Where a save's time went (seconds, on this rank).
struct SaveTimes {
  double write = 0;    ///< the HDF5 file written and closed
  double verify = 0;   ///< read back and compared (every rank its own hyperslabs)
  double publish = 0;  ///< fsync, rename, `latest`, old checkpoints removed (rank 0; the others wait)
  std::string str() const;  ///< "write 2.31 s, verify 2.50 s, publish 0.40 s"
};

/// \brief Saves into `dir` as step_00000123.h5 (collective over `comm`).
class CheckpointManager {
 public:
  CheckpointManager(std::string dir, int keep, MPI_Comm comm);
  /// Writes `<name>.tmp` (each rank its sections' runs), verifies it (every rank reads back its own
  /// hyperslabs, rank 0 the attributes and completeness), makes it durable, renames it, points
  /// `latest` at it and deletes all but the newest `keep`. Returns the path.
  /// `times`, where given, receives where the time went.
  std::string save(const io::CheckpointState& state, const std::vector<io::FlatTensor>& tensors,
                   const std::vector<io::FlatSection>& sections, SaveTimes* times = nullptr);

 private:
  std::string dir_;
  int keep_;
  MPI_Comm comm_;
};

/// `--resume`: "" (fresh start), "auto" (dir/latest if it exists, else a fresh start) or a path.
/// Returns the checkpoint to load, or "".
std::string resolve_resume(const std::string& resume, const std::string& dir);

/// Installs handlers so that SIGTERM, SIGUSR1 and SIGUSR2 (what Slurm's --signal sends before the
/// time limit) request a save-and-exit at the next step boundary.
void install_stop_signals();
/// True once one of those signals arrived on this process.
bool stop_requested();

/// `tapestry ckpt info`: config, step, layout, tensors with shapes, sizes and norms.
void ckpt_info(const std::string& path, std::ostream& out);
/// `tapestry ckpt verify`: completeness and every tensor's checksum. Throws tapestry::Error on failure.
void ckpt_verify(const std::string& path, std::ostream& out);
/// `tapestry ckpt export`: the parameters as an llm.c checkpoint (round-trips with --init-from).
void ckpt_export_llmc(const std::string& path, const std::string& out_path, std::ostream& out);

/// \brief `tapestry ckpt eval`: the checkpoint's loss on the first `rows` rows of a token file.
struct EvalConfig {
  std::string data;         ///< llm.c token file
  int seq_len = 64;         ///< T
  int rows = 4;             ///< row r: inputs tokens[r*T + t], targets tokens[r*T + t + 1]
  std::string logits_out;   ///< optional: raw little-endian float32 logits (rows*T, vocab_size)
};
/// Loads the whole model on this rank and prints the mean loss (one line, JSON).
void ckpt_eval(const std::string& path, const EvalConfig& cfg, std::ostream& out);

}  // namespace tapestry::train
