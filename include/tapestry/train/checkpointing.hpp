#pragma once
/// \file
/// \brief Checkpoint policy for training runs: names, crash-safe saving (temporary name, verify,
/// rename, `latest` pointer, keep the last K), resume resolution, stop signals, and the
/// `tapestry ckpt info|verify|export` tools.

#include <mpi.h>

#include <ostream>
#include <string>
#include <vector>

#include "tapestry/core/config.hpp"
#include "tapestry/io/checkpoint.hpp"

namespace tapestry::train {

/// The file's tensors for a model shape, in flat-buffer order: llm.c's per-layer stacks split into
/// one dataset per layer (e.g. qkvw -> blocks/03/attn/qkv/weight).
std::vector<io::FlatTensor> checkpoint_tensors(const ModelConfig& m);

/// \brief Saves into `dir` as step_00000123.h5 (collective over `comm`).
class CheckpointManager {
 public:
  CheckpointManager(std::string dir, int keep, MPI_Comm comm);
  /// Writes `<name>.tmp`, verifies it (attributes, completeness, every tensor's checksum), renames
  /// it, points `latest` at it and deletes all but the newest `keep`. Returns the path.
  std::string save(const io::CheckpointState& state, const std::vector<io::FlatTensor>& tensors,
                   const io::RankSlice& slice);

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

}  // namespace tapestry::train
