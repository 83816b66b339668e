#pragma once
/// \file
/// \brief llm.c GPT-2 checkpoints (train_gpt2.c, fp32): header of 256 int32 (magic 20240326,
/// version 3, max_seq_len, vocab_size, num_layers, num_heads, channels, padded_vocab_size), then the
/// fp32 parameters in llm.c's order, which is also Tapestry's flat parameter layout.

#include <mpi.h>

#include <string>
#include <vector>

#include "tapestry/core/config.hpp"
#include "tapestry/core/flat_run.hpp"

namespace tapestry::io {

constexpr int kLlmcMagic = 20240326;
constexpr int kLlmcVersionFp32 = 3;

/// Reads only the header into a model shape. Throws tapestry::Error naming the problem.
ModelConfig read_llmc_header(const std::string& path);

/// Reads the parameters; `expected` (n) must be the model's parameter count.
std::vector<float> read_llmc_params(const std::string& path, std::size_t expected);

/// Writes a checkpoint (atomically) from a shape and the flat parameters.
void write_llmc_checkpoint(const std::string& path, const ModelConfig& m,
                           const std::vector<float>& params);
/// The same file written collectively over `comm` by the ranks that hold the model in parts: each
/// writes data[run.local] at the whole-model positions its `runs` name (every element by exactly
/// one rank), so nothing of the whole model's size is allocated. Written to `path`.tmp, fsync'ed,
/// then renamed by rank 0.
void write_llmc_checkpoint(const std::string& path, MPI_Comm comm, const ModelConfig& m, const float* data,
                           const std::vector<FlatRun>& runs);

}  // namespace tapestry::io
